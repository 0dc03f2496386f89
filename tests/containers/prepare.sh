#!/usr/bin/env bash
# Gets this machine ready for tests/containers: a Docker engine that answers (dockerd is
# started when installed and none runs), and the images docker/Dockerfile and
# docker/compose.yaml name, each pulled or, where it cannot be pulled (a machine that
# reaches only the package registries), built as a local stand-in under the same name:
#   debian:bookworm-slim  a minimal Debian made by debootstrap from Debian's packages;
#   rust:1.95-bookworm    that, with gcc and this machine's Rust toolchain copied in;
#   node:20-alpine        that, with this machine's node and the libraries it links.
# The Rust stand-in carries this machine's trusted CA bundle, so that cargo inside it
# reaches crates.io as the machine's own clients do.
#
# `make test` starts it in the background first, so that the downloads overlap the build;
# the test runs it again, which waits for that run (a lock) and then finds everything.
# Exit 0: ready. Exit 3: the test cannot run here, and the last line says why.
# Usage: prepare.sh SCRATCH_DIR
set -euo pipefail
scratch=$1
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
cabundle=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
mkdir -p "$scratch"
exec 9>"$scratch/prepare.lock"
flock 9

cannot() { echo "$*" >&2; exit 3; }
for program in docker docker-compose; do
  command -v "$program" >/dev/null || cannot "\`$program\` is not installed"
done
answers() { docker info --format '{{.ServerVersion}}' >/dev/null 2>&1; }
if ! answers; then
  command -v dockerd >/dev/null || cannot "no Docker engine answers and \`dockerd\` is not installed"
  # Its own session, and not holding the lock: it outlives this script.
  setsid dockerd >"$scratch/dockerd.log" 2>&1 </dev/null 9>&- &
  for _ in $(seq 1 120); do answers && break; sleep 0.5; done
  answers || cannot "dockerd started but did not answer within 60 s (its log: $scratch/dockerd.log)"
fi

have() { docker image inspect "$1" >/dev/null 2>&1; }
pulled() { timeout 60 docker pull -q "$1" >/dev/null 2>&1; }
standin() { echo "containers: cannot pull $1; using a local stand-in: $2" >&2; }

if ! have debian:bookworm-slim && ! pulled debian:bookworm-slim; then
  command -v debootstrap >/dev/null ||
    cannot "debian:bookworm-slim cannot be pulled and \`debootstrap\` is not installed to make it"
  standin debian:bookworm-slim "debootstrap --variant=minbase bookworm from $mirror"
  root="$scratch/bookworm"
  rm -rf "$root"
  debootstrap --variant=minbase bookworm "$root" "$mirror" >"$scratch/debootstrap.log" 2>&1 ||
    { tail -20 "$scratch/debootstrap.log" >&2; exit 1; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | docker import - debian:bookworm-slim >/dev/null
  rm -rf "$root"
fi

if ! have rust:1.95-bookworm && ! pulled rust:1.95-bookworm; then
  toolchain=$(rustc --print sysroot)
  standin rust:1.95-bookworm "debian:bookworm-slim with gcc and the toolchain at $toolchain"
  ctx="$scratch/rust"
  rm -rf "$ctx" && mkdir -p "$ctx/rust"
  # The toolchain without its documentation (share/doc is most of its size).
  cp -a "$toolchain/bin" "$toolchain/lib" "$toolchain/libexec" "$ctx/rust/" 2>/dev/null ||
    cp -a "$toolchain/bin" "$toolchain/lib" "$ctx/rust/"
  cp "$cabundle" "$ctx/ca-certificates.crt"
  cat >"$ctx/Dockerfile" <<'DOCKERFILE'
FROM debian:bookworm-slim
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev >/dev/null \
 && rm -rf /var/lib/apt/lists/*
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY rust /usr/local/rust
ENV PATH=/usr/local/rust/bin:$PATH CARGO_HOME=/usr/local/cargo CARGO_HTTP_CAINFO=/etc/ssl/certs/ca-certificates.crt
DOCKERFILE
  docker build -q -t rust:1.95-bookworm "$ctx" >/dev/null
  rm -rf "$ctx"
fi

if ! have node:20-alpine && ! pulled node:20-alpine; then
  node=$(readlink -f "$(command -v node)")
  standin node:20-alpine "debian:bookworm-slim with $node"
  ctx="$scratch/node"
  rm -rf "$ctx" && mkdir -p "$ctx/lib"
  cp "$node" "$ctx/node"
  # Every library node links but libc's own, which the image has in the same version.
  ldd "$node" | awk '/=> \//{print $3}' | grep -v -E '/(libc|libm|libdl|libpthread|librt)\.so' |
    xargs -r -I{} cp -L {} "$ctx/lib/"
  cat >"$ctx/Dockerfile" <<'DOCKERFILE'
FROM debian:bookworm-slim
COPY lib /usr/local/lib/node
COPY node /usr/local/bin/node
ENV LD_LIBRARY_PATH=/usr/local/lib/node
RUN node -e "process.exit(0)"
DOCKERFILE
  docker build -q -t node:20-alpine "$ctx" >/dev/null
  rm -rf "$ctx"
fi
