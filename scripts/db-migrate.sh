#!/usr/bin/env bash
# Runs db-migrate for the npm scripts: the installed binary when one is on PATH, otherwise
# this repository's release build, built on first use (cargo skips the build when current).
set -euo pipefail
if command -v db-migrate >/dev/null 2>&1; then
  exec db-migrate "$@"
fi
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if ! command -v cargo >/dev/null 2>&1; then
  echo "db-migrate is not installed and cargo is missing to build it; install Rust (https://rustup.rs) or put db-migrate on PATH" >&2
  exit 2
fi
# shellcheck source=scripts/lib/common.sh
source "$root/scripts/lib/common.sh"
ensure_libclang
cargo build --release --quiet --locked --manifest-path "$root/Cargo.toml" >&2
exec "$root/target/release/db-migrate" "$@"
