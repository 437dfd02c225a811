# Shared by the scripts in scripts/ and by .ci/run (sourced, not run): messages prefixed with
# the calling script's name, running a command as root, and installing Debian packages.
# shellcheck shell=bash

_script_name="$(basename "$0")"

note() {
  echo "$_script_name: $*" >&2
}

die() {
  echo "$_script_name: $*" >&2
  exit 1
}

fail() {
  die "FAIL: $*"
}

as_root() {
  if [[ "$(id -u)" -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    die "'$*' needs root, and sudo is missing; run it as root once"
  fi
}

_apt_updated=
apt_install() {
  command -v apt-get >/dev/null || die "cannot install $*: no apt-get here; install it by hand"
  note "installing $* with apt-get"
  if [[ -z "$_apt_updated" ]]; then
    as_root timeout 600 apt-get update -qq >&2
    _apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive as_root timeout 900 \
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# The pg_query crate (PostgreSQL's own parser, libpg_query) generates its Rust bindings at
# build time with bindgen, which loads libclang and reads clang's own headers: Debian's
# libclang-dev. Installed when missing; LIBCLANG_PATH names another libclang.
ensure_libclang() {
  [[ -n "${LIBCLANG_PATH:-}" ]] && return 0
  if compgen -G '/usr/lib/llvm-*/lib/libclang*.so*' >/dev/null &&
    compgen -G '/usr/lib/llvm-*/lib/clang/*/include/stdbool.h' >/dev/null; then
    return 0
  fi
  apt_install libclang-dev
}

# For a musl target bindgen asks libclang to read the C headers as musl's, and it then finds
# neither clang's own headers (stdbool.h) nor musl's: name both for `target`.
bindgen_musl_args() {
  local target="$1" resource
  resource="$(printf '%s\n' /usr/lib/llvm-*/lib/clang/*/include | sort -V | tail -n 1)"
  export "BINDGEN_EXTRA_CLANG_ARGS_${target//-/_}=-isystem $resource -isystem /usr/include/${target%%-*}-linux-musl"
}

# The cargo target directory as an absolute path (CARGO_TARGET_DIR, else target/ in the
# repository, which the caller names in ROOT).
target_dir() {
  local dir="${CARGO_TARGET_DIR:-target}"
  [[ "$dir" == /* ]] || dir="$ROOT/$dir"
  echo "$dir"
}

# Sets PG_BIN to the newest installed PostgreSQL's server programs, installing PostgreSQL
# with apt-get when there is none.
newest_pg_bin() {
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || apt_install postgresql
  PG_BIN="$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
}
