"""deploy/: the systemd units, the compose file and the sample settings, each checked by
the tool that reads it.

- The units with `systemd-analyze verify` (the template through an instance name,
  taskexec-worker@worker-007-kind.service). verify insists that ExecStart's program exists,
  and the units name /usr/local/bin/taskexec, where the README installs it; so the test
  verifies copies in a temporary directory in which that one path is replaced by the binary
  under test (TASKEXEC_BIN). Nothing else in them is changed. verify reports an unknown key
  or a bad value as a warning with exit status 0, so any line it prints about our units
  fails the test, not only its exit status.
- The compose file with `docker-compose config` (Debian's docker-compose reads and
  validates a file without a Docker daemon).
- The sample env files: every name a setting of `taskexec serve --help` (or one of the few
  other variables they document), every value one the settings table accepts.

Each check is also shown to reject a broken copy, so that a check that silently passes
everything (a tool that changed its output, say) cannot go unnoticed.
"""
import os
import re
import shutil
import subprocess

import pytest
import yaml

from conftest import BIN

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(ROOT, "deploy")
INSTALLED = "/usr/local/bin/taskexec"
SERVER_UNIT = "taskexec.service"
WORKER_TEMPLATE = "taskexec-worker@.service"
WORKER_INSTANCE = "taskexec-worker@worker-007-kind.service"


def read(path):
    with open(path) as f:
        return f.read()


def unit_settings(text):
    """[(section, key, value)] of a unit file (keys may repeat)."""
    out, section = [], None
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def one(settings, key, section="Service"):
    values = [v for s, k, v in settings if s == section and k == key]
    assert len(values) == 1, f"{key}= in [{section}]: {values}"
    return values[0]


def seconds(text):
    m = re.fullmatch(r"(\d+)\s*(s|min)?", text)
    assert m, text
    return int(m.group(1)) * (60 if m.group(2) == "min" else 1)


# ---- systemd units ----

def verify_units(tmp, units, verified, binary=None):
    """Writes units ({file name: text}) into tmp with ExecStart's program replaced by the
    binary under test (or `binary`), runs `systemd-analyze verify` on the name `verified`,
    and returns what it complained about (empty when the unit is clean)."""
    binary = binary or os.path.abspath(BIN)
    for name, text in units.items():
        assert f"ExecStart={INSTALLED} " in text, f"{name}: ExecStart is not {INSTALLED}"
        with open(os.path.join(tmp, name), "w") as f:
            f.write(text.replace(INSTALLED, binary))
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", os.path.join(tmp, verified)],
                       capture_output=True, text=True, timeout=60)
    lines = (r.stdout + r.stderr).splitlines()
    ours = [line for line in lines if tmp in line or "taskexec" in line]
    return ([f"exit status {r.returncode}"] if r.returncode else []) + ours


def deployed_units():
    return {SERVER_UNIT: read(os.path.join(DEPLOY, SERVER_UNIT)),
            WORKER_TEMPLATE: read(os.path.join(DEPLOY, WORKER_TEMPLATE))}


@pytest.mark.parametrize("verified", [SERVER_UNIT, WORKER_INSTANCE])
def test_systemd_analyze_verify_accepts_the_units(tmpdir_path, verified):
    assert shutil.which("systemd-analyze"), "systemd-analyze is missing (package systemd)"
    assert os.access(BIN, os.X_OK), f"{BIN} is not built"
    assert verify_units(tmpdir_path, deployed_units(), verified) == []


@pytest.mark.parametrize("verified", [SERVER_UNIT, WORKER_INSTANCE])
@pytest.mark.parametrize("breakage", [
    ("ProtectHome=yes", "ProtectHomes=yes"),          # a misspelt key
    ("KillMode=mixed", "KillMode=gently"),            # a value systemd does not take
    ("Restart=on-failure", "Restart=sometimes"),
    ("[Service]", "[Servce]"),                        # a misspelt section
    (None, None),                                     # ExecStart's program is missing
])
def test_systemd_analyze_verify_rejects_a_broken_unit(tmpdir_path, verified, breakage):
    units = deployed_units()
    name = SERVER_UNIT if verified == SERVER_UNIT else WORKER_TEMPLATE
    if breakage[0] is None:
        problems = verify_units(tmpdir_path, units, verified,
                                binary=os.path.join(tmpdir_path, "no-such-taskexec"))
        assert any("no-such-taskexec" in p for p in problems), problems
        return
    assert breakage[0] in units[name]
    units[name] = units[name].replace(breakage[0], breakage[1])
    assert verify_units(tmpdir_path, units, verified) != []


def serve_shutdown_limit():
    """SHUTDOWN_LIMIT_SECONDS of src/serve.c: the watchdog's limit before the executors'
    grace is added."""
    m = re.search(r"#define SHUTDOWN_LIMIT_SECONDS (\d+)", read(os.path.join(ROOT, "src",
                                                                            "serve.c")))
    assert m
    return int(m.group(1))


@pytest.mark.parametrize("name", [SERVER_UNIT, WORKER_TEMPLATE])
def test_the_units_are_hardened_and_stop_gracefully(name):
    u = unit_settings(read(os.path.join(DEPLOY, name)))
    assert one(u, "ProtectSystem") == "strict"
    assert one(u, "ProtectHome") == "yes"
    assert one(u, "NoNewPrivileges") == "yes"
    assert one(u, "PrivateTmp") == "yes"
    assert one(u, "Restart") == "on-failure" and seconds(one(u, "RestartSec")) > 0
    assert "2" in one(u, "RestartPreventExitStatus").split()   # a bad setting: exit 2
    state = one(u, "StateDirectory")
    assert state.startswith("taskexec")
    assert one(u, "WorkingDirectory") == "%S/" + state
    if name == SERVER_UNIT:
        assert one(u, "DynamicUser") == "yes"
    else:
        assert one(u, "User") == "taskexec" and "docker" in one(u, "SupplementaryGroups")
        assert "--id %i" in one(u, "ExecStart")
        env = [v for s, k, v in u if k == "Environment"]
        assert "BACKEND_PROVISION=kind" in env
        assert "KUBECONFIG=%S/taskexec-worker/%i/.kube/config" in env
        assert "HOME=%S/taskexec-worker/%i" in env
    files = [v for s, k, v in u if k == "EnvironmentFile"]
    assert files and all(f.startswith("-/etc/taskexec/") for f in files)
    # SIGTERM to the main process, which stops its executors with their grace; systemd's
    # SIGKILL must not come before the server's own watchdog (30 s + EXEC_GRACE_SECONDS,
    # which is 300 with EXECUTOR=aiopslab).
    assert one(u, "KillMode") == "mixed"
    assert seconds(one(u, "TimeoutStopSec")) > serve_shutdown_limit() + 300


def test_the_worker_template_passes_the_instance_as_id_and_cluster():
    """The instance name reaches `taskexec worker --id`, which names the Kind cluster, the
    kubeconfig and the state directory; `--supported-problems ""` (the default) claims all."""
    u = unit_settings(read(os.path.join(DEPLOY, WORKER_TEMPLATE)))
    argv = one(u, "ExecStart").split()
    assert argv[:4] == [INSTALLED, "worker", "--id", "%i"]
    assert argv[4:] == ["--supported-problems", "${WORKER_SUPPORTED_PROBLEMS}"]
    assert "WORKER_SUPPORTED_PROBLEMS=" in [v for s, k, v in u if k == "Environment"]


# ---- compose ----

def compose_config(path):
    r = subprocess.run(["docker-compose", "-f", path, "config"], capture_output=True,
                       text=True, timeout=60, env=dict(os.environ, POSTGRES_PASSWORD="pw"))
    return r


def test_docker_compose_config_accepts_the_compose_file():
    assert shutil.which("docker-compose"), "docker-compose is missing (package docker-compose)"
    r = compose_config(os.path.join(DEPLOY, "compose.yaml"))
    assert r.returncode == 0, r.stderr
    c = yaml.safe_load(r.stdout)["services"]
    assert c["postgres"]["image"] == "postgres:15"
    assert "pg_isready" in " ".join(c["postgres"]["healthcheck"]["test"])
    t = c["taskexec"]
    assert t["build"]["context"] == ROOT
    assert os.path.isfile(os.path.join(ROOT, t["build"]["dockerfile"]))
    assert t["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "http://127.0.0.1:8000/ready" in t["healthcheck"]["test"]
    assert t["environment"]["DATABASE_URL"] == "postgresql://taskexec:pw@postgres:5432/taskexec"
    assert t["environment"]["HOST"] == "0.0.0.0"
    assert seconds(t["stop_grace_period"]) > serve_shutdown_limit() + 5   # simulated: 5 s
    w = c["worker"]
    assert w["profiles"] == ["worker"] and w["image"] == t["image"]
    assert w["depends_on"]["taskexec"]["condition"] == "service_healthy"
    assert w["environment"]["TASKEXEC_API"] == "http://taskexec:8000"


@pytest.mark.parametrize("breakage", [
    ("    healthcheck:", "    healthchek:"),                        # unknown option
    ("condition: service_healthy", "condition: service_ready"),    # bad value
    ("retries: 12", "retries: twelve"),                             # bad type
    ("context: ..", "context: ../no-such-directory"),               # missing build context
    ("  taskexec:\n", "  taskexec: x\n"),                           # not YAML
])
def test_docker_compose_config_rejects_a_broken_compose_file(tmpdir_path, breakage):
    text = read(os.path.join(DEPLOY, "compose.yaml"))
    assert breakage[0] in text
    os.makedirs(os.path.join(tmpdir_path, "deploy"))
    path = os.path.join(tmpdir_path, "deploy", "compose.yaml")
    with open(path, "w") as f:
        f.write(text.replace(breakage[0], breakage[1], 1))
    assert compose_config(path).returncode != 0


# ---- the image and the sample settings ----

def install_deps_packages():
    text = read(os.path.join(ROOT, "scripts", "install-deps.sh"))
    return set(re.search(r"pkgs=\((.*?)\)", text, re.S).group(1).split())


def test_the_image_builds_with_packages_the_project_installs():
    """The Dockerfile's build stage installs a subset of scripts/install-deps.sh's packages
    and builds the Makefile's release target."""
    text = read(os.path.join(DEPLOY, "Dockerfile"))
    build = text.split("FROM debian:12-slim")[0]
    assert build.startswith("#") and "FROM debian:12 AS build" in build
    names = re.search(r"--no-install-recommends(.*?)&&", build, re.S).group(1)
    packages = set(names.replace("\\", " ").split())
    assert packages and packages <= install_deps_packages(), packages - install_deps_packages()
    assert "make -j\"$(nproc)\" build/taskexec" in build
    assert re.search(r"^build/taskexec:", read(os.path.join(ROOT, "Makefile")), re.M)
    assert "COPY --from=build /src/build/taskexec /usr/local/bin/taskexec" in text


def known_settings():
    r = subprocess.run([BIN, "serve", "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0
    names = set(re.findall(r"^  ([A-Z][A-Z0-9_]+)\s", r.stdout, re.M))
    assert {"DATABASE_URL", "WORK_DIR", "BACKEND_PROVISION"} <= names
    return names


# Variables the sample files may name that are not settings of the table: the worker's API
# (read by `taskexec worker` and the CLI) and what AIOpsLab's agent reads.
OTHER_VARIABLES = {"TASKEXEC_API", "OPENAI_API_KEY", "OPENAI_BASE_URL"}


def env_lines(path):
    """{name: value} of KEY=VALUE lines, and the names of commented-out `#KEY=` examples."""
    values, examples = {}, set()
    for line in read(path).splitlines():
        m = re.fullmatch(r"(#?)([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if m:
            (examples.add(m.group(2)) if m.group(1) else values.update({m.group(2): m.group(3)}))
    return values, examples


@pytest.mark.parametrize("name", ["taskexec.env", "worker.env"])
def test_the_sample_env_files_name_real_settings_with_valid_values(tmpdir_path, name):
    values, examples = env_lines(os.path.join(DEPLOY, name))
    unknown = (set(values) | examples) - known_settings() - OTHER_VARIABLES
    assert not unknown, f"{name} names variables taskexec does not read: {unknown}"
    # The settings table checks every value when it loads them; `migrate` loads them and
    # opens a (throwaway) database, nothing else.
    env = {k: v for k, v in os.environ.items() if k not in known_settings()}
    env.update(values)
    env["DATABASE_URL"] = f"sqlite://{tmpdir_path}/check.db"
    r = subprocess.run([BIN, "migrate"], capture_output=True, text=True, timeout=60, env=env,
                       cwd=tmpdir_path)
    assert r.returncode == 0, r.stderr


def test_install_deps_has_the_tools_these_checks_use():
    assert {"docker-compose", "systemd"} <= install_deps_packages()


# ---- the README's section ----

def readme_deploying():
    text = read(os.path.join(ROOT, "README.md"))
    return text.split("\n## Deploying\n", 1)[1].split("\n## ", 1)[0]


# Variables the section names that are not settings: the worker's API, and what a unit or
# the executor sets for a run.
README_VARIABLES = {"TASKEXEC_API", "TASKEXEC_TOKEN", "WRITE_TOKEN", "HOME", "KUBECONFIG",
                    "KUBE_CONTEXT"}


def test_the_readme_deploying_section_names_what_exists():
    """Its files, settings and metric names exist (no invented metric), and its shell
    examples parse."""
    section = readme_deploying()
    for path in set(re.findall(r"\bdeploy/[\w.@-]+", section)):
        assert os.path.exists(os.path.join(ROOT, path)), path
    metrics_c = read(os.path.join(ROOT, "src", "service", "metrics.c"))
    named = set(re.findall(r"\btaskexec_[a-z_]+", section))
    assert len(named) >= 10
    for metric in named:
        assert re.search(r'"[^"]*\b' + metric + r'\b', metrics_c), f"no metric {metric}"
    settings = known_settings()
    for name in set(re.findall(r"`([A-Z][A-Z0-9]*_[A-Z0-9_]+)(?:=[^`]*)?`", section)):
        assert name in settings or name in README_VARIABLES, f"no setting {name}"
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert len(blocks) >= 4
    for block in blocks:
        r = subprocess.run(["bash", "-n"], input=block.replace("\n   ", "\n"),
                           capture_output=True, text=True, timeout=10)
        assert r.returncode == 0, (block, r.stderr)
    assert "### Access control" in section and "`WORKER_JOIN_TOKEN`" in section
