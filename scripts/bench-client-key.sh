#!/usr/bin/env bash
# How long the Cloud SQL connector's client key takes to make: examples/client_key.rs makes
# N RSA-2048 keys with the job's own code (its primes looked for on up to one thread a core)
# and N with rsa's one-thread `RsaPrivateKey::new`, taking turns, on every core the machine
# gives and then on one (taskset), as on a Cloud Run job with one vCPU. BENCHMARKS.md ("The
# Cloud SQL client key") keeps the numbers. Nothing but the build is needed: no database, no
# network. About a minute on 2 cores after the build.
#
# Usage: scripts/bench-client-key.sh [N]   (N keys of each kind per line, default 40)
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
readonly ROUNDS="${1:-40}"
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "usage: scripts/bench-client-key.sh [N], N a whole number of keys"

note "building examples/client_key.rs (release profile)"
ensure_libclang
timeout 1800 cargo build --release --locked --example client_key >&2
program="$(target_dir)/release/examples/client_key"

note "every core"
"$program" "$ROUNDS"
if command -v taskset >/dev/null; then
  note "one core (taskset -c 0)"
  taskset -c 0 "$program" "$ROUNDS"
fi
