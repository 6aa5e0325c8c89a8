"""Access control and safe outbound calls (CONTRACT.md "Deployment and access control"):
API tokens with roles, the worker join token, the CLI's token, and webhooks and LLM
upstreams refused on link-local and metadata addresses, by address and by name."""
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.parse

import pytest
import requests

from conftest import BIN, fast

sys.path.insert(0, os.path.dirname(__file__))
import fake_llm  # noqa: E402

READ, WRITE, ADMIN = "r" * 20 + "-read", "w" * 20 + "-write", "a" * 20 + "-admin"
AGENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "llm_agent.py")


def tokens_file(tmp, text):
    path = os.path.join(tmp, "tokens")
    with open(path, "w") as f:
        f.write(text)
    return path


def auth(token):
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def guarded(make_server, tmpdir_path):
    path = tokens_file(tmpdir_path, f"# the team's tokens\n{READ} read\n\n{WRITE}  write\n"
                                    f"{ADMIN}\tadmin\n")
    return make_server(API_TOKENS_FILE=path, NUM_INTERNAL_WORKERS=1)


def count_tasks(s):
    return s.get("/api/v1/tasks/stats", headers=auth(READ)).json()["total"]


def test_roles_decide_who_may_do_what(guarded):
    s = guarded
    for path in ("/health", "/ready", "/metrics", "/", "/docs"):
        assert s.get(path).status_code == 200, path
    # Refused on its headers: a caller without a token is not read further.
    r = s.post("/api/v1/tasks", data="x" * 500000, headers={"Content-Type": "application/json"})
    assert r.status_code == 401
    r = s.get("/api/v1/tasks")
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    assert set(r.json()) == {"detail", "type", "request_id"} and "API token" in r.json()["detail"]
    assert s.get("/api/v1/tasks", headers=auth(READ)).status_code == 200
    assert s.get("/openapi.json", headers=auth(READ)).status_code == 200

    before = count_tasks(s)
    r = s.post("/api/v1/tasks", json={"problem_id": "p"}, headers=auth(READ))
    assert r.status_code == 403 and "write" in r.json()["detail"]
    assert count_tasks(s) == before, "a refused request changes nothing"
    r = s.post("/api/v1/tasks", json={"problem_id": "p", "parameters": fast(steps=30,
                                                                              step_seconds=1)},
               headers=auth(WRITE))
    assert r.status_code == 201
    tid = r.json()["id"]
    assert s.post(f"/api/v1/tasks/{tid}/cancel", headers=auth(READ)).status_code == 403
    assert s.post(f"/api/v1/tasks/{tid}/cancel", headers=auth(WRITE)).status_code == 200
    r = s.post("/api/v1/workers/internal/scale", json={"num_workers": 0}, headers=auth(WRITE))
    assert r.status_code == 403 and "admin" in r.json()["detail"]
    assert s.get("/api/v1/workers/internal/status", headers=auth(READ)).status_code == 200
    r = s.post("/api/v1/workers/internal/scale", json={"num_workers": 0}, headers=auth(ADMIN))
    assert r.status_code == 200, r.text
    assert s.post("/api/v1/experiments", json={}, headers=auth(READ)).status_code == 403
    assert s.post("/api/v1/sessions", json={"problem_id": "p"}, headers=auth(READ)).status_code == 403


def test_malformed_authorization_is_401(guarded):
    s = guarded
    for header in ["", "Bearer", "Bearer ", "Basic " + READ, "bearer", "Token " + READ,
                   "Bearer " + READ + " extra", "Bearer " + "x" * 600, "Bearer " + READ[:-1],
                   "Bearer " + READ.upper()]:
        r = s.get("/api/v1/tasks", headers={"Authorization": header})
        assert r.status_code == 401, header
        assert r.json()["type"] and r.json()["request_id"]
    # the scheme is case-insensitive, as RFC 7235 says
    assert s.get("/api/v1/tasks", headers={"Authorization": "bearer " + READ}).status_code == 200


def test_api_token_alone_is_admin(make_server):
    s = make_server(API_TOKEN=ADMIN, NUM_INTERNAL_WORKERS=0)
    assert s.get("/api/v1/tasks").status_code == 401
    assert s.post("/api/v1/workers/internal/scale", json={"num_workers": 1},
                  headers=auth(ADMIN)).status_code == 200


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("content, says", [
    (f"{READ} reader\n", "line 1: unknown role"),
    (f"# ok\n{READ} read\nshort write\n", "line 3: a token must be 16"),
    (f"{READ}\n", "line 1: expected \"token role\""),
    (f"{READ} read write\n", "line 1: expected"),
    (f"{READ} read\n{READ} admin\n", "line 2: this token is given twice"),
    ("# nothing\n\n", "has no token"),
])
def test_a_bad_tokens_file_stops_the_start_naming_the_line(make_server, tmpdir_path, content,
                                                           says):
    s = make_server(start=False, API_TOKENS_FILE=tokens_file(tmpdir_path, content))
    s.start(wait=False)
    assert s.proc.wait(timeout=20) == 2
    assert says in s.log(), s.log()


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("settings, says", [
    ({"API_TOKEN": "short"}, "API_TOKEN: a token must be 16"),
    ({"API_TOKEN": ""}, "API_TOKEN: a token must be 16"),
    ({"API_TOKENS_FILE": "/nonexistent/tokens"}, "/nonexistent/tokens"),
    ({"API_TOKEN": "a" * 20, "API_TOKENS_FILE": "/tmp"}, "API_TOKENS_FILE /tmp"),
    ({"WORKER_JOIN_TOKEN": "has space inside it"}, "WORKER_JOIN_TOKEN"),
])
def test_bad_token_settings_stop_the_start(make_server, settings, says):
    s = make_server(start=False, **settings)
    s.start(wait=False)
    assert s.proc.wait(timeout=20) == 2
    assert says in s.log(), s.log()


def test_the_join_token_guards_registration_and_workers_keep_their_own(make_server,
                                                                        make_worker):
    join = "j" * 24
    s = make_server(API_TOKEN=ADMIN, WORKER_JOIN_TOKEN=join, NUM_INTERNAL_WORKERS=0)
    body = {"worker_id": "w-x", "backend_type": "default", "capabilities": {}}
    r = s.post("/api/v1/workers/register", json=body)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    assert s.post("/api/v1/workers/register", json=body,
                  headers=auth(ADMIN)).status_code == 401, "the API token is not the join token"
    assert s.get("/api/v1/workers/w-x", headers=auth(ADMIN)).status_code == 404
    # The external worker registers with the join token, then works with its own token.
    w = make_worker(s, "ext-join-1", WORKER_JOIN_TOKEN=join)
    t = s.post("/api/v1/tasks", json={"problem_id": "p", "parameters": fast()},
               headers=auth(ADMIN)).json()
    deadline = time.time() + 30
    while s.get(f"/api/v1/tasks/{t['id']}", headers=auth(ADMIN)).json()["status"] != "completed":
        assert time.time() < deadline, w.log()
        time.sleep(0.1)
    assert s.get(f"/api/v1/tasks/{t['id']}", headers=auth(ADMIN)).json()["worker_id"] == "ext-join-1"
    # The setting may come as a flag (or .env) as well as from the environment.
    w3 = make_worker(s, "ext-join-3", "--worker-join-token", join)
    deadline = time.time() + 20
    while s.get("/api/v1/workers/ext-join-3", headers=auth(ADMIN)).status_code != 200:
        assert time.time() < deadline, w3.log()
        time.sleep(0.1)
    # Without the join token it is refused and says so.
    bad = make_worker(s, "ext-join-2")
    assert bad.proc.wait(timeout=30) != 0
    assert "registration refused (401)" in bad.log()


def test_without_a_join_token_registration_stays_open(make_server):
    s = make_server(API_TOKEN=ADMIN, NUM_INTERNAL_WORKERS=0)
    r = s.post("/api/v1/workers/register",
               json={"worker_id": "w-open", "backend_type": "default", "capabilities": {}})
    assert r.status_code == 201


def test_the_cli_sends_its_token(make_server, tmpdir_path):
    s = make_server(API_TOKEN=ADMIN, NUM_INTERNAL_WORKERS=1)

    def cli(*args, token=ADMIN):
        env = dict(os.environ, TASKEXEC_API=s.url)
        env.pop("TASKEXEC_TOKEN", None)
        if token:
            env["TASKEXEC_TOKEN"] = token
        return subprocess.run([BIN, *args, "--api", s.url], env=env, capture_output=True,
                              text=True, timeout=60)

    out = cli("submit", "--problem-id", "cli-token", "--json")
    assert out.returncode == 0, out.stderr
    tid = json.loads(out.stdout)["id"]
    assert cli("status", tid).returncode == 0
    path = os.path.join(tmpdir_path, "export.jsonl")
    assert cli("export", "--output", path, "--format", "jsonl").returncode == 0
    assert tid in open(path).read()
    out = cli("status", tid, token=None)
    assert out.returncode != 0 and "API token" in out.stdout + out.stderr


# ---- outbound calls never reach link-local or metadata addresses ----

def webhook_row(s, task_id, request):
    """(state, error) of a task's webhook delivery, read from the database."""
    if s.db_url.startswith("sqlite://"):
        with sqlite3.connect(s.db_url[len("sqlite://"):]) as db:
            return db.execute("SELECT webhook_state, webhook_error FROM tasks WHERE id = ?",
                              (task_id,)).fetchone()
    name = urllib.parse.urlparse(s.db_url).path.lstrip("/")
    out = request.getfixturevalue("pg").psql(
        f"SELECT webhook_state || '|' || COALESCE(webhook_error, '') FROM tasks "
        f"WHERE id = '{task_id}'", db=name).strip()
    state, _, error = out.partition("|")
    return state, error


def wait_webhook(s, task_id, request, state="failed"):
    deadline = time.time() + 20
    while (row := webhook_row(s, task_id, request))[0] != state:
        assert time.time() < deadline, (row, s.log()[-2000:])
        time.sleep(0.1)
    return row


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/",
                                 "http://[fe80::1]:8080/hook",
                                 "http://[::ffff:169.254.169.254]/x"])
def test_a_webhook_to_a_metadata_address_is_refused(make_server, request, url):
    s = make_server(NUM_INTERNAL_WORKERS=1, WEBHOOK_MAX_ATTEMPTS=5, WEBHOOK_RETRY_BASE_MS=50)
    t = s.submit(callback_url=url, parameters=fast(steps=1))
    state, error = wait_webhook(s, t["id"], request)
    assert "refused to connect to" in error and "OUTBOUND_ALLOW_HOSTS" in error, error
    assert "not retried" in s.log()


def hosts_namespace_prefix(tmpdir_path, line):
    """A command prefix that runs the server with /etc/hosts replaced (its own mount
    namespace), so a name resolves to a metadata address as a poisoned DNS would make it;
    None when this is not possible here (not root, or no unshare)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return None
    hosts = os.path.join(tmpdir_path, "hosts")
    with open(hosts, "w") as f:
        f.write("127.0.0.1 localhost\n" + line + "\n")
    probe = subprocess.run(["unshare", "--mount", "sh", "-c",
                            f"mount --bind {hosts} /etc/hosts && getent hosts metadata.test"],
                           capture_output=True, text=True)
    if probe.returncode != 0 or "169.254" not in probe.stdout:
        return None
    return ["unshare", "--mount", "sh", "-c", f'mount --bind {hosts} /etc/hosts && exec "$0" "$@"']


def test_a_name_that_resolves_to_a_metadata_address_is_refused_unless_allowed(
        make_server, tmpdir_path, request):
    prefix = hosts_namespace_prefix(tmpdir_path, "169.254.169.254 metadata.test")
    if prefix is None:
        pytest.skip("needs root and unshare to give the server its own /etc/hosts")
    s = make_server(start=False, NUM_INTERNAL_WORKERS=1, WEBHOOK_MAX_ATTEMPTS=1)
    s.prefix = prefix
    s.start()
    t = s.submit(callback_url="http://metadata.test/hook", parameters=fast(steps=1))
    _, error = wait_webhook(s, t["id"], request)
    assert "refused to connect to 169.254.169.254" in error, error
    s.stop()
    # Named in OUTBOUND_ALLOW_HOSTS, the same host is tried (and here cannot be reached).
    s2 = make_server(start=False, NUM_INTERNAL_WORKERS=1, WEBHOOK_MAX_ATTEMPTS=1,
                     OUTBOUND_ALLOW_HOSTS="metadata.test", WEBHOOK_TIMEOUT_SECONDS=1)
    s2.prefix = prefix
    s2.start()
    t = s2.submit(callback_url="http://metadata.test/hook", parameters=fast(steps=1))
    _, error = wait_webhook(s2, t["id"], request)
    assert "refused" not in error and error, error


def test_an_llm_upstream_on_a_metadata_address_is_refused(make_server):
    s = make_server(EXECUTOR="command", EXECUTOR_COMMAND=AGENT, NUM_INTERNAL_WORKERS=1)
    call = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    t = s.submit(problem_id="p", agent_config={"base_url": "http://169.254.169.254/v1",
                                               "calls": [call]})
    got = s.wait_status(t["id"], ("completed",))["result"]["output"]["calls"][0]
    assert got["status"] == 502
    assert "refused to connect to 169.254.169.254" in got["body"]["error"]["message"]
    deadline = time.time() + 10
    while not (calls := s.get(f"/api/v1/tasks/{t['id']}/llm-calls").json()["calls"]):
        assert time.time() < deadline
        time.sleep(0.05)
    assert "refused to connect" in calls[0]["error"]


def test_the_dashboard_asks_for_a_token_once(guarded):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    shots = os.path.join(root, "build", "screenshots")
    os.makedirs(shots, exist_ok=True)
    r = subprocess.run(["node", os.path.join(root, "tests", "e2e", "token.cjs"), guarded.url,
                        WRITE, os.path.join(shots, "token.png")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_no_executor_sees_the_servers_secrets(make_server, tmpdir_path):
    env_out = os.path.join(tmpdir_path, "env.json")
    s = make_server(EXECUTOR="command", EXECUTOR_COMMAND=AGENT, NUM_INTERNAL_WORKERS=1,
                    API_TOKEN=ADMIN, WORKER_JOIN_TOKEN="j" * 24, WEBHOOK_SECRET="hook-secret",
                    TASKEXEC_TOKEN=WRITE, SOMETHING_ELSE="kept")
    t = s.post("/api/v1/tasks", json={"problem_id": "p", "agent_config": {"env_out": env_out}},
               headers=auth(ADMIN)).json()
    deadline = time.time() + 30
    while s.get(f"/api/v1/tasks/{t['id']}", headers=auth(ADMIN)).json()["status"] != "completed":
        assert time.time() < deadline, s.log()
        time.sleep(0.1)
    env = json.load(open(env_out))
    for name in ("API_TOKEN", "API_TOKENS_FILE", "WORKER_JOIN_TOKEN", "WEBHOOK_SECRET",
                 "DATABASE_URL", "TASKEXEC_TOKEN"):
        assert name not in env, name
    assert ADMIN not in json.dumps(env) and env["SOMETHING_ELSE"] == "kept"
