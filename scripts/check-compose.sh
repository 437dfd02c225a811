#!/usr/bin/env bash
# Checks docker-compose.yml without a Docker engine: Compose itself validates it (`config`
# parses, checks the compose schema and the services depends_on names), then the assertions
# below check what the local stack promises: PostgreSQL 16 with the dev credentials on
# 127.0.0.1:5432, a named volume, a healthcheck over TCP, the schema applied by
# docker/initdb/apply-migrations.sh with no *.sql in /docker-entrypoint-initdb.d, migrate
# waiting for a healthy postgres, the bot for a successful migrate, and .env.example.
#
# Usage: scripts/check-compose.sh [COMPOSE_FILE]    (default: docker-compose.yml)
# Uses `docker compose` when it works, else `docker-compose`; installs Debian's docker-compose
# (which also brings python3-yaml) when neither is there. Exits non-zero on any failure.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
readonly ROOT
readonly FILE="${1:-$ROOT/docker-compose.yml}"

# Prints the compose command to use, installing one when there is none.
find_compose() {
  if docker compose version >/dev/null 2>&1; then
    echo "docker compose"
    return
  fi
  if ! command -v docker-compose >/dev/null; then
    echo "check-compose.sh: installing docker-compose" >&2
    apt_install docker-compose
  fi
  echo docker-compose
}

# Prints a Python interpreter that has PyYAML.
find_python() {
  local python
  for python in python3 /usr/bin/python3; do
    if "$python" -c 'import yaml' >/dev/null 2>&1; then
      echo "$python"
      return
    fi
  done
  echo "check-compose.sh: installing python3-yaml" >&2
  apt_install python3-yaml
  /usr/bin/python3 -c 'import yaml' || die "python3-yaml installed, but /usr/bin/python3 cannot import yaml"
  echo /usr/bin/python3
}

[[ -f "$FILE" ]] || die "$FILE not found"
read -r -a compose <<<"$(find_compose)"
echo "check-compose.sh: ${compose[*]} config ($("${compose[@]}" version --short 2>/dev/null || true))"
# Every profile, so that the services behind one are validated too.
"${compose[@]}" -f "$FILE" --profile app --profile dry-run config -q ||
  die "$FILE is not a valid compose file"

python="$(find_python)"
"$python" - "$FILE" "$ROOT" <<'PY'
"""Asserts the structure of the local stack; prints every failure, exits 1 if any."""
import os
import sys

import yaml

path, root = sys.argv[1], sys.argv[2]
base = os.path.dirname(os.path.abspath(path))
with open(path, encoding="utf-8") as f:
    text = f.read()
doc = yaml.safe_load(text)
services = doc.get("services") or {}
failures = []


def check(ok, message):
    if not ok:
        failures.append(message)


def service(name):
    svc = services.get(name)
    check(isinstance(svc, dict), f"service {name} is missing")
    return svc if isinstance(svc, dict) else {}


def env(svc):
    value = svc.get("environment") or {}
    if isinstance(value, list):
        value = dict(item.split("=", 1) if "=" in item else (item, None) for item in value)
    return value


def mounts(svc):
    """(source, target, read_only) of each volume entry, short or long syntax."""
    result = []
    for v in svc.get("volumes") or []:
        if isinstance(v, str):
            parts = v.split(":")
            if len(parts) == 1:
                result.append((None, parts[0], False))
            else:
                result.append((parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
        else:
            result.append((v.get("source"), v.get("target"), bool(v.get("read_only"))))
    return result


def local_path(source):
    if source is None or not source.startswith((".", "/", "~")):
        return None  # a named volume
    return os.path.realpath(os.path.join(base, os.path.expanduser(source)))


def command(svc):
    value = svc.get("command")
    return value.split() if isinstance(value, str) else value


def condition(svc, dependency):
    depends = svc.get("depends_on") or {}
    return depends.get(dependency, {}).get("condition") if isinstance(depends, dict) else None


URL = "postgresql://discord_video:dev_password@postgres:5432/discord_video_dev?sslmode=disable"
INITDB = "/docker-entrypoint-initdb.d"
# What the postgres image runs from /docker-entrypoint-initdb.d besides *.sh.
IMAGE_RUNS = (".sql", ".sql.gz", ".sql.xz", ".sql.zst")
migrations = os.path.realpath(os.path.join(root, "migrations"))

postgres = service("postgres")
check(postgres.get("image") == "postgres:16", "postgres: image must be postgres:16")
check(
    {k: env(postgres).get(k) for k in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB")}
    == {
        "POSTGRES_USER": "discord_video",
        "POSTGRES_PASSWORD": "dev_password",
        "POSTGRES_DB": "discord_video_dev",
    },
    "postgres: POSTGRES_USER/PASSWORD/DB must be discord_video/dev_password/discord_video_dev",
)
check(
    "127.0.0.1:5432:5432" in [str(p) for p in postgres.get("ports") or []],
    "postgres: ports must publish 127.0.0.1:5432:5432",
)
named = set((doc.get("volumes") or {}).keys())
check(
    any(s in named and t == "/var/lib/postgresql/data" for s, t, _ in mounts(postgres)),
    "postgres: /var/lib/postgresql/data must be a named volume declared under volumes:",
)
test = (postgres.get("healthcheck") or {}).get("test") or []
test = test.split() if isinstance(test, str) else test
check("pg_isready" in " ".join(test), "postgres: healthcheck must run pg_isready")
check(
    any(a.startswith(("--host=127.0.0.1", "--host=localhost")) for a in test)
    or any(a == "-h" and b in ("127.0.0.1", "localhost") for a, b in zip(test, test[1:])),
    "postgres: healthcheck must connect over TCP (--host=127.0.0.1): during initialisation the "
    "image's temporary server listens only on the unix socket",
)

migrations_dir = env(postgres).get("MIGRATIONS_DIR", "/migrations")
check(
    (migrations, migrations_dir, True)
    in [(local_path(s), t, ro) for s, t, ro in mounts(postgres)],
    f"postgres: ./migrations must be mounted read-only at {migrations_dir} (MIGRATIONS_DIR)",
)
initdb_scripts = []
for name, svc in services.items():
    for source, target, _ in mounts(svc):
        target = (target or "").rstrip("/")
        if not (target == INITDB or target.startswith(INITDB + "/")):
            continue
        local = local_path(source)
        check(local is not None, f"{name}: {INITDB} must be a bind mount of docker/initdb")
        if local is None:
            continue
        check(local != migrations, f"{name}: migrations/ must not be mounted at {INITDB}")
        if os.path.isdir(local):
            found = {f: os.path.join(local, f) for f in sorted(os.listdir(local))}
        else:  # a single file, run under the name it has inside the container
            found = {os.path.basename(target) if target != INITDB else os.path.basename(local): local}
        run = [f for f in found if f.endswith(IMAGE_RUNS)]
        check(not run, f"{name}: the image would run {run} from {INITDB} (down files too)")
        initdb_scripts += found.values()
check(
    any(p.endswith("/apply-migrations.sh") and os.path.isfile(p) for p in initdb_scripts),
    f"postgres: docker/initdb/apply-migrations.sh must be mounted into {INITDB}",
)

for name, cmd in (("migrate", ["up"]), ("dry-run", ["up", "--dry-run"])):
    svc = service(name)
    check("build" in svc, f"{name}: must be built from the Dockerfile (build: .)")
    check(command(svc) == cmd, f"{name}: command must be {cmd}")
    check(str(svc.get("restart")) == "no", f'{name}: restart must be "no" (a one-shot job)')
    check(condition(svc, "postgres") == "service_healthy", f"{name}: must wait for postgres service_healthy")
    check(env(svc).get("DATABASE_URL") == URL, f"{name}: DATABASE_URL must be {URL}")
check(not service("migrate").get("profiles"), "migrate: must run by default (no profile)")
check("dry-run" in (service("dry-run").get("profiles") or []), "dry-run: must be behind profile dry-run")

bot = service("bot")
check(bool(bot.get("profiles")), "bot: must be behind a profile (it is an example)")
check(
    condition(bot, "migrate") == "service_completed_successfully",
    "bot: must wait for migrate service_completed_successfully",
)

for needed in ("docker compose down -v && docker compose up -d", "db-migrate verify"):
    header = text.split("\nservices:")[0]
    check(needed in header, f"the comment at the top must show `{needed}`")

with open(os.path.join(root, ".env.example"), encoding="utf-8") as f:
    lines = [l.rstrip("\n") for l in f if l.strip() and not l.lstrip().startswith("#")]
check(
    lines == ["DATABASE_URL=postgresql://discord_video:dev_password@localhost:5432/discord_video_dev?sslmode=disable"],
    ".env.example must hold exactly DATABASE_URL=postgresql://discord_video:dev_password@localhost:5432/discord_video_dev?sslmode=disable",
)

for failure in failures:
    print(f"check-compose.sh: {path}: {failure}", file=sys.stderr)
sys.exit(1 if failures else 0)
PY
echo "check-compose.sh: $FILE is valid"
