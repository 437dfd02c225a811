#!/usr/bin/env bash
# Checks the deployment manifests under deploy/ and fails on the first kind of problem found:
#   - every YAML file parses;
#   - the Kubernetes manifests validate against the Kubernetes schema (kubernetes-validate
#     --strict), the CI files against the Cloud Build and GitHub workflow schemas;
#   - the Kubernetes Job and the Cloud Run jobs have the settings deploy/*/README.md promise,
#     among them: each names its Cloud SQL instance (CLOUD_SQL_INSTANCE, or for Cloud Run the
#     run.googleapis.com/cloudsql-instances annotation; both must agree, and a /cloudsql socket
#     URL must name an annotated instance), an IAM login's user is the job's service account,
#     the production jobs back up before migrating (DB_MIGRATE_BACKUP=auto) and the dry run
#     does not, and the job's waits (migration lock, backup, table locks) leave 2 minutes of
#     its time limit for the migrations;
#   - every db-migrate invocation in them (container args, `gcloud run jobs ... --args`) is
#     accepted by the binary's own parser, with and without the manifest's own environment;
#   - the CI pipelines run the staging dry run, staging's migration, the production schema check
#     (`verify --schema`), production's migration and the bot deploy in that order, with no
#     `gcloud sql backups create` step (the production job backs up itself); a pull-request
#     check deploys nothing and runs `db-migrate plan --format github`.
# Installs its Python tools with pip when they are missing; builds target/debug/db-migrate
# when it is missing (DB_MIGRATE_BIN names another binary).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

K8S_VERSION=1.30.0

pip_install() {
  echo "check-manifests: installing $*"
  python3 -m pip install --quiet --disable-pip-version-check "$@"
}
python3 -c 'import yaml' 2>/dev/null || pip_install PyYAML
python3 -c 'import kubernetes_validate' 2>/dev/null || pip_install kubernetes-validate
python3 -c 'import check_jsonschema' 2>/dev/null || pip_install check-jsonschema

if [ -n "${DB_MIGRATE_BIN:-}" ]; then
  bin=$DB_MIGRATE_BIN
  [ -x "$bin" ] || { echo "check-manifests: DB_MIGRATE_BIN=$bin is not an executable" >&2; exit 1; }
else
  bin=target/debug/db-migrate
  if [ ! -x "$bin" ]; then
    echo "check-manifests: building $bin"
    cargo build --locked --bin db-migrate
  fi
fi

echo "check-manifests: kubernetes-validate --strict (Kubernetes $K8S_VERSION)"
python3 -m kubernetes_validate --strict --quiet --kubernetes-version "$K8S_VERSION" deploy/kubernetes/*.yaml

echo "check-manifests: CI schemas"
python3 -m check_jsonschema --builtin-schema vendor.cloudbuild deploy/ci/cloudbuild.yaml
python3 -m check_jsonschema --builtin-schema vendor.github-workflows deploy/ci/github-actions.yml

echo "check-manifests: structure and db-migrate arguments"
python3 - "$bin" <<'PY'
import glob
import os
import re
import shlex
import subprocess
import sys
import tempfile
import urllib.parse

import yaml

BINARY = os.path.abspath(sys.argv[1])
# Accepted arguments get as far as reading the migrations directory, which does not exist:
# exit 3. clap's usage errors and configuration errors (a bad DATABASE_URL) exit 2 before it.
EXPECTED_EXIT = 3
failures = []
invocations = 0


def fail(where, message):
    failures.append(f"{where}: {message}")


def get(node, *path):
    for key in path:
        if isinstance(node, dict):
            node = node.get(key)
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            return None
    return node


def load_all():
    docs = []
    for path in sorted(glob.glob("deploy/**/*.y*ml", recursive=True)):
        try:
            with open(path) as f:
                docs += [(path, d) for d in yaml.safe_load_all(f) if d is not None]
        except yaml.YAMLError as e:
            fail(path, f"does not parse: {e}")
    return docs


def env_map(container):
    return {e["name"]: e for e in container.get("env") or []}


def argv_of(where, container):
    """What db-migrate receives: the image's entrypoint is the binary, its command `up`."""
    command = container.get("command")
    args = [str(a) for a in container.get("args") or []]
    if command:
        if os.path.basename(str(command[0])) != "db-migrate":
            fail(where, f"command {command} does not run db-migrate")
            return None
        return [str(c) for c in command[1:]] + args
    return args or ["up"]


def run_binary(where, argv, env):
    global invocations
    invocations += 1
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env, "MIGRATIONS_DIR": "/nonexistent"}
    with tempfile.TemporaryDirectory() as cwd:  # no .env file to read
        done = subprocess.run([BINARY, *argv], env=env, cwd=cwd, capture_output=True, text=True)
    if done.returncode != EXPECTED_EXIT:
        fail(where, f"db-migrate {shlex.join(argv)} exited {done.returncode}, "
                    f"expected {EXPECTED_EXIT}: {done.stderr.strip()[:600]}")


def check_invocation(where, argv, container=None):
    run_binary(where, [*argv, "--log-format", "json"],
               {"DATABASE_URL": "postgresql://u@127.0.0.1:1/x"})
    if container is None:
        return
    # Again with the manifest's own literal values (DATABASE_URL, LOG_FORMAT, DB_MIGRATE_*),
    # which db-migrate parses before it reads the directory. Files named by variables are
    # secrets mounted at run time and are left out.
    literal = {name: str(e["value"]) for name, e in env_map(container).items()
               if "value" in e and name not in ("DATABASE_PASSWORD_FILE", "PGPASSFILE")}
    run_binary(f"{where} (with its env)", argv, literal)


def url_parts(url):
    """(user, host) of a postgresql:// URL, percent-decoded; host is "" when the URL names
    none (a host= query parameter counts). None for key=value strings and empty values."""
    if not re.match(r"postgres(ql)?://", url):
        return None
    parsed = urllib.parse.urlsplit(url)
    userinfo, _, hostport = parsed.netloc.rpartition("@")
    host = hostport.rsplit(":", 1)[0] if not hostport.startswith("[") else hostport
    query = urllib.parse.parse_qs(parsed.query)
    host = host or (query.get("host") or query.get("hostaddr") or [""])[0]
    return urllib.parse.unquote(userinfo.split(":", 1)[0]), host


def check_cloudsql_env(where, container, instance, service_account):
    """The connector's settings: the instance is named where the connector needs it, and an
    IAM login's user is the service account the job runs as."""
    env = env_map(container)
    url = get(env, "DATABASE_URL", "value")
    parts = url_parts(str(url)) if url is not None else None
    if parts is not None and parts[1] == "" and "PGHOST" not in env and not instance:
        fail(where, "DATABASE_URL names no host, so it needs CLOUD_SQL_INSTANCE for the connector "
                    "(otherwise it connects to localhost)")
    if str(get(env, "CLOUD_SQL_IAM_AUTH", "value")).lower() == "true" and parts is not None:
        # db-migrate shortens a full e-mail the same way.
        expected = (service_account or "").removesuffix(".gserviceaccount.com")
        if parts[0].removesuffix(".gserviceaccount.com") != expected:
            fail(where, f"IAM login as {parts[0]!r}, but the job runs as {service_account!r}: the "
                        f"user must be {expected!r} (written with %40 in DATABASE_URL)")
        if "PGPASSWORD" in env:
            fail(where, "PGPASSWORD is set, but an IAM login's password is a token")


def check_no_literal_secrets(where, container):
    env = env_map(container)
    if "value" in env.get("PGPASSWORD", {}):
        fail(where, "PGPASSWORD is a literal; take it from a secret (valueFrom)")
    url = str(get(env, "DATABASE_URL", "value") or "")
    userinfo = url.split("://", 1)[-1].split("@", 1)[0] if "@" in url else ""
    if ":" in userinfo:
        fail(where, "DATABASE_URL holds a password; take it from a secret")


# What db-migrate may spend waiting, in seconds, at its defaults: the migration lock
# (--lock-wait), the backup (--backup-timeout, when it takes one) and table locks
# (--ddl-lock-wait).
DEFAULT_WAITS = {"DB_MIGRATE_LOCK_WAIT": 60, "DB_MIGRATE_BACKUP_TIMEOUT": 1200,
                 "DB_MIGRATE_DDL_LOCK_WAIT": 180}


def seconds(text):
    """A duration as db-migrate reads it: 90, 90s, 1500ms, 5m."""
    match = re.fullmatch(r"\s*(\d+)(ms|s|m)?\s*", text)
    if not match:
        return None
    value, unit = int(match.group(1)), match.group(2) or "s"
    return value / 1000 if unit == "ms" else value * 60 if unit == "m" else value


def check_waits(where, env, limit):
    """The job's waits leave at least 2 minutes of its time limit for the migrations, so a
    long wait ends in its own exit code (6, 8) rather than in SIGTERM at the limit."""
    total = 0
    for name, default in DEFAULT_WAITS.items():
        if name == "DB_MIGRATE_BACKUP_TIMEOUT" and get(env, "DB_MIGRATE_BACKUP", "value") not in ("auto", "always"):
            continue
        value = get(env, name, "value")
        wait = default if value is None else seconds(str(value))
        if wait is None:
            fail(where, f"{name}={value} is not a duration (90s, 1500ms, 5m)")
            return
        total += wait
    if total > limit - 120:
        fail(where, f"the migration lock, backup and table lock waits add up to {total:g} s, which "
                    f"leaves less than 2 minutes of the {limit} s limit for the migrations; lower "
                    "DB_MIGRATE_DDL_LOCK_WAIT or DB_MIGRATE_BACKUP_TIMEOUT, or raise the limit")


def check_kubernetes(docs):
    jobs = [(p, d) for p, d in docs if d.get("apiVersion") == "batch/v1" and d.get("kind") == "Job"]
    accounts = {get(d, "metadata", "name"): d for p, d in docs
                if d.get("apiVersion") == "v1" and d.get("kind") == "ServiceAccount"}
    if not jobs:
        fail("deploy/kubernetes", "no batch/v1 Job")
    for path, job in jobs:
        where = f"{path} Job/{get(job, 'metadata', 'name')}"
        spec, pod = job["spec"], get(job, "spec", "template", "spec") or {}
        if spec.get("backoffLimit") != 1:
            fail(where, "spec.backoffLimit must be 1")
        for key in ("activeDeadlineSeconds", "ttlSecondsAfterFinished"):
            if not isinstance(spec.get(key), int) or spec[key] <= 0:
                fail(where, f"spec.{key} must be a positive number")
        if pod.get("restartPolicy") != "Never":
            fail(where, "restartPolicy must be Never")
        grace = pod.get("terminationGracePeriodSeconds")
        if not isinstance(grace, int) or not 10 <= grace <= 60:
            fail(where, "terminationGracePeriodSeconds must be 10..60 (db-migrate stops within 6 s)")
        pod_security = pod.get("securityContext") or {}
        expected_pod = {("runAsNonRoot",): True, ("runAsUser",): 65532,
                        ("seccompProfile", "type"): "RuntimeDefault"}
        for keys, value in expected_pod.items():
            if get(pod_security, *keys) != value:
                fail(where, f"pod securityContext.{'.'.join(keys)} must be {value}")
        containers = pod.get("containers") or []
        if len(containers) != 1 or pod.get("initContainers"):
            fail(where, "exactly one container and no init/sidecar containers (a proxy sidecar keeps the Job from completing)")
        account = pod.get("serviceAccountName")
        if not get(accounts.get(account), "metadata", "annotations", "iam.gke.io/gcp-service-account"):
            fail(where, f"serviceAccountName {account!r} needs a ServiceAccount with iam.gke.io/gcp-service-account")
        for container in containers:
            cwhere = f"{where} container {container.get('name')}"
            security = container.get("securityContext") or {}
            if security.get("readOnlyRootFilesystem") is not True:
                fail(cwhere, "securityContext.readOnlyRootFilesystem must be true")
            if security.get("allowPrivilegeEscalation") is not False:
                fail(cwhere, "securityContext.allowPrivilegeEscalation must be false")
            if "ALL" not in (get(security, "capabilities", "drop") or []):
                fail(cwhere, "securityContext.capabilities.drop must include ALL")
            for kind in ("requests", "limits"):
                if not get(container, "resources", kind):
                    fail(cwhere, f"resources.{kind} missing")
            env = env_map(container)
            if "CLOUD_SQL_INSTANCE" not in env:
                fail(cwhere, "CLOUD_SQL_INSTANCE missing (the Cloud SQL instance, PROJECT:REGION:INSTANCE)")
            check_cloudsql_env(cwhere, container, "CLOUD_SQL_INSTANCE" in env,
                               get(accounts.get(account), "metadata", "annotations",
                                   "iam.gke.io/gcp-service-account"))
            check_no_literal_secrets(cwhere, container)
            if isinstance(spec.get("activeDeadlineSeconds"), int):
                check_waits(cwhere, env, spec["activeDeadlineSeconds"])
            argv = argv_of(cwhere, container)
            if argv is not None:
                check_invocation(cwhere, argv, container)


def check_cloud_run(docs):
    jobs = [(p, d) for p, d in docs
            if d.get("apiVersion") == "run.googleapis.com/v1" and d.get("kind") == "Job"]
    if not jobs:
        fail("deploy/cloud-run", "no run.googleapis.com/v1 Job")
    names = set()
    accounts = {}
    for path, job in jobs:
        name = get(job, "metadata", "name")
        names.add(name)
        where = f"{path} Job/{name}"
        task = get(job, "spec", "template", "spec", "template", "spec") or {}
        if task.get("maxRetries") != 1:
            fail(where, "task maxRetries must be 1")
        if not isinstance(task.get("timeoutSeconds"), int) or task["timeoutSeconds"] <= 0:
            fail(where, "task timeoutSeconds must be a positive number")
        if not task.get("serviceAccountName"):
            fail(where, "task serviceAccountName missing (a dedicated service account)")
        annotation = get(job, "spec", "template", "metadata", "annotations",
                         "run.googleapis.com/cloudsql-instances")
        annotated = [i.strip() for i in str(annotation or "").split(",") if i.strip()]
        containers = task.get("containers") or []
        if len(containers) != 1:
            fail(where, "exactly one container")
        for container in containers:
            env = env_map(container)
            if get(env, "LOG_FORMAT", "value") != "json":
                fail(where, "LOG_FORMAT must be json")
            # The instance: db-migrate's own setting (the connector, IAM login, backups), or
            # Cloud Run's socket annotation; where both are given they must name the same one.
            instance = get(env, "CLOUD_SQL_INSTANCE", "value")
            if instance is None and not annotated:
                fail(where, "names no Cloud SQL instance: set env CLOUD_SQL_INSTANCE (or the "
                            "run.googleapis.com/cloudsql-instances annotation for a socket)")
            if instance is not None and annotated and str(instance) not in annotated:
                fail(where, f"CLOUD_SQL_INSTANCE {instance} is not among the annotated instances {annotated}")
            url = str(get(env, "DATABASE_URL", "value") or "")
            socket = re.search(r"[?&]host=/cloudsql/([^&]+)", url)
            if socket and socket.group(1) not in annotated:
                fail(where, f"DATABASE_URL's socket {socket.group(1)} is not an annotated instance "
                            "(run.googleapis.com/cloudsql-instances)")
            # Production backs up before migrating; a dry run changes nothing and must not.
            backup = get(env, "DB_MIGRATE_BACKUP", "value")
            if "dry-run" in name:
                if backup in ("auto", "always"):
                    fail(where, f"DB_MIGRATE_BACKUP={backup} on a dry run: it changes nothing to back up")
            elif backup != "auto":
                fail(where, "DB_MIGRATE_BACKUP must be auto (the job backs up before migrating), "
                            + ("but it is unset" if backup is None else f"not {backup!r}"))
            check_cloudsql_env(where, container, instance is not None, task.get("serviceAccountName"))
            check_no_literal_secrets(where, container)
            if isinstance(task.get("timeoutSeconds"), int):
                check_waits(where, env, task["timeoutSeconds"])
            argv = argv_of(where, container)
            if argv is None:
                continue
            rehearses = "--dry-run" in argv or argv[:1] == ["plan"]
            if rehearses != ("dry-run" in name):
                fail(where, f"args {argv}: only the *dry-run* job may (and must) run plan or up --dry-run")
            check_invocation(where, argv, container)
        for container in containers:
            instance = get(env_map(container), "CLOUD_SQL_INSTANCE", "value")
            accounts.setdefault(task.get("serviceAccountName"), set()).add(str(instance))
    # Staging's jobs must not be able to touch production: one service account per instance.
    for account, instances in accounts.items():
        if len(instances) > 1:
            fail("deploy/cloud-run", f"service account {account} runs jobs on {sorted(instances)}: "
                                     "give each instance's jobs their own")
    return names


def shell_commands(text):
    """The commands in a shell script, as token lists (continuations joined)."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:
            continue
        current = []
        for token in tokens + [";"]:
            if token in (";", "&&", "||", "|"):
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(token)
    return commands


def ci_commands(path, doc):
    """gcloud/kubectl commands of a Cloud Build config or a GitHub workflow, in order."""
    if "steps" in doc:  # Cloud Build
        commands = []
        for step in doc["steps"]:
            args = [str(a) for a in step.get("args") or []]
            entrypoint = step.get("entrypoint")
            if entrypoint in ("bash", "sh") and "-c" in args:
                commands += shell_commands(args[args.index("-c") + 1])
            elif step.get("script"):
                commands += shell_commands(step["script"])
            elif entrypoint:
                commands.append([entrypoint, *args])
        return commands
    commands = []
    for job in (doc.get("jobs") or {}).values():
        for step in job.get("steps") or []:
            commands += shell_commands(step.get("run") or "")
    return commands


def flag(tokens, name):
    for i, token in enumerate(tokens):
        if token.startswith(name + "="):
            return token.split("=", 1)[1]
        if token == name and i + 1 < len(tokens):
            return tokens[i + 1]
    return None


def check_ci(docs, run_jobs):
    ci = [(p, d) for p, d in docs if p.startswith("deploy/ci/")]
    if not ci:
        fail("deploy/ci", "no CI pipeline")
    for path, doc in ci:
        steps = []
        plans = []
        for tokens in ci_commands(path, doc):
            if tokens and os.path.basename(tokens[0]) == "db-migrate":
                check_invocation(f"{path} {shlex.join(tokens)}", tokens[1:])
                plans.append(tokens[1:])
            if tokens[:1] != ["gcloud"]:
                continue
            words = [t for t in tokens[1:] if not t.startswith("-")]
            if words[:3] in (["run", "jobs", "execute"], ["run", "jobs", "update"],
                             ["run", "jobs", "create"], ["run", "jobs", "deploy"]):
                job = words[3] if len(words) > 3 else None
                if job not in run_jobs:
                    fail(path, f"gcloud run jobs {words[2]} {job}: no such job in deploy/cloud-run")
                args = flag(tokens, "--args")
                if args is not None:  # gcloud takes a comma-separated list
                    check_invocation(f"{path} {shlex.join(tokens)}", args.split(","))
                if words[2] == "execute":
                    if "--wait" not in tokens:
                        fail(path, f"gcloud run jobs execute {job} without --wait")
                    steps.append(f"execute {job}" + (f" {args.replace(',', ' ')}" if args else ""))
            elif words[:3] == ["sql", "backups", "create"]:
                fail(path, "gcloud sql backups create: unexpected, the production job backs up "
                           "itself (DB_MIGRATE_BACKUP=auto)")
            elif words[:2] == ["run", "deploy"]:
                steps.append("deploy bot")
        # A pull-request check runs db-migrate itself and deploys nothing.
        if not steps and plans:
            if not any(argv[:1] == ["plan"] and "github" in argv for argv in plans):
                fail(path, f"runs db-migrate {plans} but no `plan --format github`")
            continue
        expected = ["execute db-migrate-dry-run", "execute db-migrate-staging",
                    "execute db-migrate verify --schema", "execute db-migrate", "deploy bot"]
        if steps != expected:
            fail(path, f"pipeline runs {steps}, expected {expected}")


docs = load_all()
docs = [(p, d) for p, d in docs if isinstance(d, dict)]
check_kubernetes([(p, d) for p, d in docs if p.startswith("deploy/kubernetes/")])
run_jobs = check_cloud_run([(p, d) for p, d in docs if p.startswith("deploy/cloud-run/")])
check_ci(docs, run_jobs)

if failures:
    print("\n".join(f"check-manifests: FAIL {f}" for f in failures), file=sys.stderr)
    sys.exit(1)
print(f"check-manifests: ok ({len(docs)} YAML documents, {invocations} db-migrate runs)")
PY
