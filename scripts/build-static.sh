#!/usr/bin/env bash
# Builds the fully static binary the Dockerfile builds (the `dist` profile), without Docker:
# the musl target for this machine's architecture (x86_64-unknown-linux-musl on CI), with
# ring's C code compiled by Debian's musl-gcc. It installs what is missing (the rustup target, and
# musl-tools through apt-get as root or with sudo), so it works the same on a clean machine.
#
# Usage: scripts/build-static.sh
# Prints the binary's path alone on stdout (for scripts/check-static.sh); cargo's output and
# the path with the size go to stderr.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
cd "$(dirname "${BASH_SOURCE[0]}")/.."

case "$(uname -m)" in
x86_64 | amd64) target=x86_64-unknown-linux-musl ;;
aarch64 | arm64) target=aarch64-unknown-linux-musl ;;
*) die "no musl target is set up for $(uname -m); build on x86_64 or aarch64" ;;
esac

if ! rustup target list --installed | grep -qx "$target"; then
  note "adding the rustup target $target"
  rustup target add "$target" >&2
fi

# ring compiles C and assembly; for a musl target it needs musl's headers and a gcc wrapper
# that uses them, which Debian ships as musl-tools.
if ! command -v musl-gcc >/dev/null; then
  note "installing musl-tools (musl-gcc)"
  as_root apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends musl-tools >&2
fi
# cc-rs would look for <arch>-linux-musl-gcc first; name the compiler so the choice is plain.
export "CC_${target//-/_}=musl-gcc"

ensure_libclang
bindgen_musl_args "$target"

# .cargo/static.toml: linked at a fixed address, mimalloc's build settings (see there).
cargo --config .cargo/static.toml build --profile dist --locked --target "$target" >&2

binary="${CARGO_TARGET_DIR:-target}/$target/dist/db-migrate"
[[ -x "$binary" ]] || die "cargo succeeded but $binary is missing"
bytes="$(stat -c %s "$binary")"
note "$binary: $bytes bytes ($(awk -v b="$bytes" 'BEGIN { printf "%.2f", b / 1048576 }') MiB)"
echo "$binary"
