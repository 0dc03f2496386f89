#!/usr/bin/env bash
# Makes sure the images docker/Dockerfile and docker/compose.yaml name are present, pulling
# each one, or, where it cannot be pulled (a machine that reaches only the package
# registries), building a local stand-in under the same name and saying so:
#   debian:bookworm-slim  a minimal Debian made by debootstrap from Debian's packages;
#   rust:1.95-bookworm    that, with gcc and this machine's Rust toolchain copied in;
#   node:20-alpine        that, with this machine's node and the libraries it links.
# The Rust stand-in carries this machine's trusted CA bundle, so that cargo inside it reaches
# crates.io as the machine's own clients do.
# Usage: standins.sh SCRATCH_DIR
set -euo pipefail
scratch=$1
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
cabundle=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
mkdir -p "$scratch"

have() { docker image inspect "$1" >/dev/null 2>&1; }
pulled() { timeout 60 docker pull -q "$1" >/dev/null 2>&1; }
standin() { echo "containers: cannot pull $1; using a local stand-in: $2" >&2; }

if ! have debian:bookworm-slim && ! pulled debian:bookworm-slim; then
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
