#!/usr/bin/env bash
# Runs db-migrate for the npm scripts: the installed binary when one on PATH is this
# repository's at its current version, otherwise this repository's release build, built on
# first use (cargo skips the build when current). Never Node's db-migrate package, which
# takes the same name in node_modules/.bin (npm puts that first on PATH).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Without the repository beside this script (a copy of the npm scripts alone), any of ours.
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" 2>/dev/null | head -n 1 || true)"
while IFS= read -r candidate; do
  case "$candidate" in */node_modules/.bin/*) continue ;; esac
  found="$("$candidate" --version 2>/dev/null || true)"
  if [[ -n "$version" && "$found" == "db-migrate $version" ]] ||
    [[ -z "$version" && "$found" == "db-migrate "* ]]; then
    exec "$candidate" "$@"
  fi
done < <(type -ap db-migrate)
if ! command -v cargo >/dev/null 2>&1; then
  echo "db-migrate is not installed and cargo is missing to build it; install Rust (https://rustup.rs) or put db-migrate on PATH" >&2
  exit 2
fi
# shellcheck source=scripts/lib/common.sh
source "$root/scripts/lib/common.sh"
ensure_libclang
cargo build --release --quiet --locked --manifest-path "$root/Cargo.toml" >&2
exec "$root/target/release/db-migrate" "$@"
