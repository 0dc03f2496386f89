#!/usr/bin/env bash
# Makes the toolchain rust-toolchain.toml pins usable on a machine that cannot download
# it: when rustup does not know "1.95.0" but its installed stable *is* 1.95.0, the name
# is pointed at that stable (rustup refuses `toolchain link` for official names, so it is
# a symlink in its toolchains folder, which rustup reads as an installed toolchain).
# Anything else (no rustup, another stable) is left to rustup, which says what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v rustup >/dev/null 2>&1 || exit 0
want=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
rustup toolchain list | grep -q "^$want-" && exit 0
stable_version=$(rustup run stable rustc --version 2>/dev/null | awk '{print $2}') || exit 0
[ "$stable_version" = "$want" ] || exit 0
stable_dir=$(rustup run stable rustc --print sysroot)
host=$(rustup run stable rustc -vV | sed -n 's/^host: //p')
ln -sfn "$stable_dir" "${RUSTUP_HOME:-$HOME/.rustup}/toolchains/$want-$host"
echo "toolchain $want: using the installed stable ($stable_dir)" >&2
