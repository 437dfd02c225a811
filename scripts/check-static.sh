#!/usr/bin/env bash
# Checks the static binary the image ships, without Docker: builds it with
# scripts/build-static.sh, checks that it is statically linked at a fixed address, stripped
# and at most 12 MiB, then runs it as uid/gid 65532 in a chroot holding only what
# gcr.io/distroless/static-debian12:nonroot holds (CA certificates, /etc/passwd and /etc/group
# with root and nonroot, /tmp, the nonroot home) plus the /etc/hosts a container runtime
# mounts: no shell, no libc, no /proc, no /dev. There it runs --version, then status, up and
# verify against a throwaway PostgreSQL reached as `localhost`, a name that only /etc/hosts
# resolves (musl has no NSS), and finally status without /etc/hosts, which must fail, so that
# the check is known to go through that file.
#
# Usage: scripts/check-static.sh   (as root: chroot needs it; CI runs as root)
# Exits non-zero when a check fails; the last line is a one-line summary with the size.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
cd "$(dirname "${BASH_SOURCE[0]}")/.."

readonly NONROOT=65532

[[ "$(id -u)" -eq 0 ]] || fail "run as root: the run in an empty root needs chroot"

command -v file >/dev/null || apt_install file
command -v readelf >/dev/null || apt_install binutils
[[ -f /etc/ssl/certs/ca-certificates.crt ]] || apt_install ca-certificates

binary="$(scripts/build-static.sh)"
bytes="$(stat -c %s "$binary")"
mib="$(awk -v b="$bytes" 'BEGIN { printf "%.2f", b / 1048576 }')"
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"

# --- linking and stripping --------------------------------------------------------------
# .cargo/static.toml links it at a fixed address rather than as Rust's default static-pie
# (which `file` calls "static-pie linked"): an ELF of type EXEC, "statically linked". A
# static-pie binary would still be static, but it relocates itself at every start
# (BENCHMARKS.md), so this says when the setting stopped applying.
description="$(file -b "$binary")"
note "file: $description"
[[ "$description" =~ statically\ linked ]] ||
  fail "file does not call $binary statically linked: $description"
readelf -hW "$binary" | grep -Eq 'Type:[[:space:]]+EXEC' ||
  fail "$binary is position-independent (ELF type DYN); .cargo/static.toml's rustflags did not apply (is RUSTFLAGS set?)"
if readelf -lW "$binary" | grep -q 'Requesting program interpreter'; then
  fail "$binary requests a program interpreter (a dynamic loader)"
fi
if readelf -dW "$binary" | grep -q '(NEEDED)'; then
  fail "$binary needs shared libraries: $(readelf -dW "$binary" | grep '(NEEDED)' | tr -s ' ')"
fi
if readelf -SW "$binary" | grep -qw '\.symtab'; then
  fail "$binary is not stripped: it has a .symtab section"
fi
note "static and stripped: $bytes bytes ($mib MiB)"
# The image's binary stays small: 12 MiB at most (BENCHMARKS.md tracks its size).
readonly MAX_BYTES=$((12 * 1024 * 1024))
((bytes <= MAX_BYTES)) || fail "$binary is $bytes bytes ($mib MiB), over the 12 MiB limit"

# --- a throwaway PostgreSQL -------------------------------------------------------------
work="$(mktemp -d)"
# The server runs as `postgres`, which must reach its state directory under $work.
chmod 755 "$work"
pg_script="$work/pg/scripts/local-postgres.sh"
cleanup() {
  local code=$?
  if [[ -f "$pg_script" ]]; then
    "$pg_script" stop >/dev/null 2>&1 || note "could not stop the PostgreSQL under $work/pg"
  fi
  rm -rf "$work"
  exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A port nothing on loopback answers on: bash's /dev/tcp connect fails when it is free.
free_port() {
  local port
  for _ in $(seq 50); do
    port=$((20000 + RANDOM % 30000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return
    fi
  done
  fail "no free port found on 127.0.0.1"
}

# local-postgres.sh keeps its data in .local-postgres/ beside its scripts/ directory; a copy
# of it under $work gets a private data directory, so a developer's own local server (and its
# data) in this checkout is never touched, started or stopped here.
mkdir -p "$(dirname "$pg_script")"
cp scripts/local-postgres.sh "$pg_script"
port="$(free_port)"
PGPORT="$port" "$pg_script" start >/dev/null
url="postgresql://discord_video:dev_password@localhost:$port/discord_video_dev"

# --- the empty root ---------------------------------------------------------------------
root="$work/root"
install -d -m 755 "$root" "$root/etc" "$root/etc/ssl/certs"
install -d -m 1777 "$root/tmp"
install -d -m 700 -o "$NONROOT" -g "$NONROOT" "$root/home/nonroot"
install -m 644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
cat >"$root/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:$NONROOT:$NONROOT:nonroot:/home/nonroot:/sbin/nologin
EOF
cat >"$root/etc/group" <<EOF
root:x:0:
nobody:x:65534:
tty:x:5:
staff:x:50:
nonroot:x:$NONROOT:
EOF
cat >"$root/etc/hosts" <<'EOF'
127.0.0.1	localhost
::1	localhost ip6-localhost ip6-loopback
EOF
chmod 644 "$root/etc/passwd" "$root/etc/group" "$root/etc/hosts"
install -m 755 "$binary" "$root/db-migrate"
cp -R migrations "$root/migrations"
chmod -R a+rX "$root/migrations"

# The image's environment, less HOSTNAME, so that applied_by falls back without /proc.
chroot_bin="$(command -v chroot)"
in_root() {
  env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/home/nonroot MIGRATIONS_DIR=/migrations \
    DATABASE_URL="$url" LOG_FORMAT=json "$@"
}
run() {
  in_root "$chroot_bin" --userspec="$NONROOT:$NONROOT" --groups="$NONROOT" "$root" \
    /db-migrate "$@" </dev/null
}
expect_success() {
  local code=0
  note "in the empty root: /db-migrate $*"
  run "$@" || code=$?
  ((code == 0)) || fail "/db-migrate $* exited $code in the empty root"
}

output="$(run --version)" || fail "/db-migrate --version failed in the empty root"
[[ "$output" == "db-migrate $version" ]] ||
  fail "/db-migrate --version printed '$output', not 'db-migrate $version'"
note "in the empty root: /db-migrate --version: $output"
expect_success status
expect_success up
expect_success verify

# Without /etc/hosts `localhost` must not resolve; if it did, the run above proved nothing
# about the file. No DNS server answers on this machine, so this fails within a few seconds.
rm "$root/etc/hosts"
code=0
errors="$(run status --connect-timeout 1s 2>&1 >/dev/null)" || code=$?
((code == 5)) || fail "status without /etc/hosts exited $code, not 5 (cannot connect): $errors"
[[ "$errors" == *"failed to lookup address"* ]] ||
  fail "status without /etc/hosts failed, but not on the name lookup: $errors"
note "without /etc/hosts: status exited 5 on the name lookup, as it should"

echo "check-static.sh: OK: $binary is static and stripped, $bytes bytes ($mib MiB); --version, status, up and verify ran as $NONROOT:$NONROOT in a distroless-like root via localhost from /etc/hosts"
