"""Integration fixtures: start the real taskexec binary on 127.0.0.1 and talk HTTP to it.

Every server is stopped by the test that started it. After a clean stop the server's
stderr is checked for sanitizer reports, so the whole suite runs clean under ASan/UBSan.
"""
import glob
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest
import requests

BIN = os.environ.get("TASKEXEC_BIN") or os.path.join(
    os.path.dirname(__file__), "..", "..", "build", "asan", "taskexec")
SANITIZER_MARKS = ("AddressSanitizer", "LeakSanitizer", "runtime error:", "UndefinedBehavior")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One `taskexec serve` process with its own data directory."""

    def __init__(self, workdir, db_url=None, **settings):
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api = self.url + "/api/v1"
        self.db_url = db_url or f"sqlite://{workdir}/taskexec.db"
        self.settings = settings
        self.proc = None
        self.log_path = None
        self.starts = 0
        self.prefix = []       # e.g. setpriv to run as another user

    def env(self):
        env = dict(os.environ)
        env.update({
            "DATABASE_URL": self.db_url,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "WORK_DIR": os.path.join(self.workdir, "work"),
            "POLL_INTERVAL_MS": "200",
            "EXEC_GRACE_SECONDS": "2",
            "LOG_LEVEL": "info",
            # Tests that assert a first failure (a crash before the agent's first step, a
            # lost worker) see it final; the retry tests set their own (test_retries.py).
            "DEFAULT_MAX_RETRIES": "0",
        })
        for k, v in self.settings.items():
            env[k.upper()] = str(v)
        return env

    def start(self, wait=True):
        self.starts += 1
        self.log_path = os.path.join(self.workdir, f"server-{self.port}-{self.starts}.log")
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.prefix + [BIN, "serve"], cwd=self.workdir, env=self.env(),
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if requests.get(self.url + "/health", timeout=1).status_code in (200, 503):
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError("server did not come up:\n" + self.log())

    def log(self):
        with open(self.log_path, "r", errors="replace") as f:
            return f.read()

    def stop(self, timeout=40):
        """SIGTERM, wait, and require a clean exit with no sanitizer report."""
        if not self.proc or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("server did not stop on SIGTERM:\n" + self.log())
        text = self.log()
        for mark in SANITIZER_MARKS:
            assert mark not in text, f"sanitizer report in server output:\n{text}"
        assert code == 0, f"server exited {code}:\n{text}"

    def kill9(self):
        self.proc.kill()
        self.proc.wait()

    # --- HTTP helpers ---
    def get(self, path, **kw):
        return requests.get(self.url + path, timeout=10, **kw)

    def post(self, path, **kw):
        return requests.post(self.url + path, timeout=10, **kw)

    def put(self, path, **kw):
        return requests.put(self.url + path, timeout=10, **kw)

    def submit(self, **body):
        body.setdefault("problem_id", "misconfig_app_hotel_res-detection-1")
        r = self.post("/api/v1/tasks", json=body)
        assert r.status_code == 201, r.text
        return r.json()

    def task(self, task_id):
        r = self.get(f"/api/v1/tasks/{task_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait_status(self, task_id, statuses, timeout=30):
        if isinstance(statuses, str):
            statuses = (statuses,)
        deadline = time.time() + timeout
        t = None
        while time.time() < deadline:
            t = self.task(task_id)
            if t["status"] in statuses:
                return t
            time.sleep(0.05)
        raise AssertionError(f"task {task_id} is {t and t['status']}, wanted {statuses}")


def pg_bindir():
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if dirs:
        return dirs[-1]
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


class PgCluster:
    """A throwaway PostgreSQL cluster: initdb in a temp dir, a Unix socket only (no TCP),
    a fresh database per test. As root, the server runs as the postgres user."""

    def __init__(self):
        self.bindir = pg_bindir()
        assert self.bindir, "PostgreSQL server binaries not found (scripts/install-deps.sh)"
        self.dir = tempfile.mkdtemp(prefix="taskexec-pg-")
        os.chmod(self.dir, 0o755)
        self.as_user = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.port = free_port()
        self.data = os.path.join(self.dir, "data")
        self.names = itertools.count(1)
        self.pg(["initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync",
                 "-E", "UTF8"])
        self.start()

    def pg(self, argv, **kw):
        return subprocess.run(self.as_user + [os.path.join(self.bindir, argv[0])] + argv[1:],
                              check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              **kw)

    def start(self):
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses='' -c fsync=off "
                f"-c max_connections=200")
        self.pg(["pg_ctl", "-D", self.data, "-o", opts, "-l",
                 os.path.join(self.dir, "log"), "-w", "start"])

    def stop(self, mode="fast"):
        self.pg(["pg_ctl", "-D", self.data, "-m", mode, "-w", "stop"])

    def psql(self, sql, db="postgres"):
        return subprocess.run([os.path.join(self.bindir, "psql"), "-h", self.dir, "-p",
                               str(self.port), "-U", "postgres", "-d", db, "-Atc", sql],
                              check=True, capture_output=True, text=True).stdout

    def new_db(self):
        name = f"t{next(self.names)}"
        self.psql(f"CREATE DATABASE {name}")
        return f"postgresql:///{name}?host={self.dir}&port={self.port}&user=postgres"

    def destroy(self):
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def pg():
    cluster = PgCluster()
    yield cluster
    cluster.destroy()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request):
    return request.param


@pytest.fixture
def db_url(backend, tmpdir_path, request):
    """A fresh database of the test's backend."""
    if backend == "sqlite":
        return f"sqlite://{tmpdir_path}/taskexec.db"
    return request.getfixturevalue("pg").new_db()


@pytest.fixture
def tmpdir_path():
    with tempfile.TemporaryDirectory(prefix="taskexec-it-") as d:
        yield d


@pytest.fixture
def make_server(tmpdir_path, db_url):
    """Factory: make_server(**settings) starts a server on the test's database (both
    backends); all are stopped at the end."""
    servers = []

    def make(start=True, workdir=None, db_url=db_url, **settings):
        s = Server(workdir or tmpdir_path, db_url=db_url, **settings)
        servers.append(s)
        if start:
            s.start()
        return s

    yield make
    errors = []
    for s in servers:
        try:
            s.stop()
        except AssertionError as e:
            errors.append(str(e))
    if errors:
        pytest.fail("\n".join(errors))


@pytest.fixture
def server(make_server):
    return make_server()


def fast(steps=3, step_seconds=0.01, outcome="success"):
    """parameters.simulate for a quick simulated run."""
    return {"simulate": {"steps": steps, "step_seconds": step_seconds, "outcome": outcome}}


class Worker:
    """One `taskexec worker` process."""

    def __init__(self, server, worker_id, workdir, args=(), **settings):
        self.server = server
        self.id = worker_id
        self.log_path = os.path.join(workdir, f"worker-{worker_id}.log")
        env = dict(os.environ)
        env.update({"WORK_DIR": os.path.join(workdir, "work"), "POLL_INTERVAL_MS": "100",
                    "EXEC_GRACE_SECONDS": "2", "HEARTBEAT_TIMEOUT_SECONDS": "3"})
        env.update({k.upper(): str(v) for k, v in settings.items()})
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([BIN, "worker", "--api", server.url, "--id", worker_id,
                                      *args], cwd=workdir, env=env, stdout=log,
                                     stderr=subprocess.STDOUT)
        log.close()

    def log(self):
        with open(self.log_path, "r", errors="replace") as f:
            return f.read()

    def stop(self, timeout=40):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("worker did not stop on SIGTERM:\n" + self.log())
        text = self.log()
        for mark in SANITIZER_MARKS:
            assert mark not in text, f"sanitizer report in worker output:\n{text}"
        return self.proc.returncode


@pytest.fixture
def make_worker(tmpdir_path):
    """Factory: make_worker(server, id, *args, **settings) starts an external worker."""
    workers = []

    def make(server, worker_id, *args, **settings):
        w = Worker(server, worker_id, tmpdir_path, args, **settings)
        workers.append(w)
        return w

    yield make
    errors = []
    for w in workers:
        try:
            w.stop()
        except AssertionError as e:
            errors.append(str(e))
    if errors:
        pytest.fail("\n".join(errors))
