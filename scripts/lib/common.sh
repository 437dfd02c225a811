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
