"""The aiopslab executor, Kind provisioning and the cluster check between runs, end to
end through the server.

By default against stand-ins that behave like the real things (tests/fixtures/README.md
says which real file each piece mirrors): a stand-in `aiopslab` checkout, stand-in
`kind`, `kubectl` and `docker` keeping their clusters as files, and an OpenAI-compatible
chat endpoint served here on 127.0.0.1.

`make check-aiopslab AIOPSLAB_DIR=/path/to/AIOpsLab` runs the same tests against a real
AIOpsLab checkout (its `aiopslab/config.yml` written, its dependencies in
AIOPSLAB_PYTHON), real kind, kubectl, helm and Docker, and ~/.kube/config; each worker's
Kind cluster is created on the way. Tests that read the stand-in's own state are skipped
there; the model stays the fake one below."""
import json
import os
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

FIXTURES = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "fixtures"))
STANDIN_CHECKOUT = os.path.join(FIXTURES, "aiopslab")
STANDIN_BIN = os.path.join(FIXTURES, "bin")
STANDIN_PYDEPS = os.path.join(FIXTURES, "pydeps")
REAL = os.environ.get("AIOPSLAB_REAL_DIR")
REAL_PYTHON = os.environ.get("AIOPSLAB_REAL_PYTHON", "python3")
standin_only = pytest.mark.skipif(bool(REAL), reason="reads the stand-in's own state")
DETECTION = "misconfig_app_hotel_res-detection-1"
HOTEL = "test-hotel-reservation"
BUILTIN_NAMESPACES = {"default", "kube-node-lease", "kube-public", "kube-system",
                      "local-path-storage"}
FORMAT_ERROR = "Format validation failure"


def fenced(action):
    """An action the way AIOpsLab's parser takes it: one fenced block."""
    return f"```\n{action}\n```"


class FakeLLM:
    """An OpenAI-compatible /v1/chat/completions. `script(n)` gives the reply to the
    n-th request of a conversation (n = assistant turns so far); by default a shell
    action, then a submit. `hold` makes every request wait until released."""

    def __init__(self):
        self.requests = []
        self.hold = threading.Event()
        self.hold.set()
        self.held = threading.Event()
        self.script = lambda n: ("Action: " + fenced(
            f'exec_shell("kubectl get pods -n {HOTEL}")') if n == 0
            else "Action: " + fenced('submit("Yes")'))
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "body": body,
                                       "auth": self.headers.get("Authorization")})
                outer.held.set()
                outer.hold.wait(60)
                turns = sum(m["role"] == "assistant" for m in body["messages"])
                content = outer.script(turns)
                reply = json.dumps({
                    "id": "x", "model": body["model"] + "-0613",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 100 * len(body["messages"]),
                              "completion_tokens": 12,
                              "total_tokens": 100 * len(body["messages"]) + 12}}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply)
                except OSError:
                    pass      # the runner was stopped meanwhile

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.hold.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def llm():
    server = FakeLLM()
    yield server
    server.close()


class Lab:
    """An AIOpsLab checkout and the cluster tools a worker host has."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.env = {}
        if REAL:
            self.checkout = REAL
            self.python = REAL_PYTHON
            return
        self.python = "/usr/bin/python3"
        self.checkout = os.path.join(tmp, "AIOpsLab")
        shutil.copytree(STANDIN_CHECKOUT, self.checkout)
        self.write_config()
        self.home = os.path.join(tmp, "home")
        os.makedirs(os.path.join(self.home, ".kube"))
        with open(os.path.join(self.home, ".kube", "config"), "w") as f:
            f.write("current-context: kind-worker-001-kind\n")
        self.state = os.path.join(tmp, "standin-state")
        for d in ("clusters", "fail_create"):
            os.makedirs(os.path.join(self.state, d))
        self.log_path = os.path.join(tmp, "standin.log")
        open(self.log_path, "w").close()
        # PYTHONPATH is the server's own: it must reach the runner (wandb is there).
        self.env = {"PATH": STANDIN_BIN + ":" + os.environ["PATH"],
                    "STANDIN_STATE": self.state, "STANDIN_LOG": self.log_path,
                    "STANDIN_DEPLOY_SECONDS": "0.2", "HOME": self.home,
                    "PYTHONPATH": STANDIN_PYDEPS}

    def write_config(self, **over):
        conf = {"k8s_host": "kind", "k8s_user": "taskexec", "ssh_key_path": "~/.ssh/id_rsa",
                "data_dir": "data", "qualitative_eval": "false", "print_session": "true"}
        conf.update(over)
        with open(os.path.join(self.checkout, "aiopslab", "config.yml"), "w") as f:
            f.write("".join(f"{k}: {v}\n" for k, v in conf.items()))

    def tool_env(self):
        env = dict(os.environ)
        env.update(self.env)
        return env

    def create_cluster(self, name):
        if not REAL:
            subprocess.run(["kind", "create", "cluster", "--name", name], env=self.tool_env(),
                           check=True, capture_output=True)

    def namespaces(self, cluster):
        out = subprocess.run(["kubectl", "--context", f"kind-{cluster}", "get", "namespaces",
                              "-o", "name"], env=self.tool_env(), capture_output=True,
                             text=True, check=True).stdout
        return {n.split("/", 1)[1] for n in out.split()} - BUILTIN_NAMESPACES

    def journal(self, cluster):
        path = os.path.join(self.state, "clusters", cluster, "journal")
        return open(path).read().splitlines() if os.path.exists(path) else []

    def faults(self, cluster):
        d = os.path.join(self.state, "clusters", cluster, "faults")
        return os.listdir(d) if os.path.isdir(d) else []

    def calls(self):
        return open(self.log_path).read().splitlines()

    def touch(self, *path):
        p = os.path.join(self.state, *path)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        open(p, "w").close()
        return p

    def assert_clean(self, cluster, runs):
        """As a fresh cluster: no namespace of a problem, no fault; each run's fault
        injected and recovered exactly once."""
        assert self.namespaces(cluster) == set(), self.namespaces(cluster)
        if REAL:
            return
        assert self.faults(cluster) == []
        j = self.journal(cluster)
        assert sum(x.startswith("inject ") for x in j) == runs, j
        assert sum(x.startswith("recover ") for x in j) == runs, j


@pytest.fixture
def lab(tmpdir_path):
    return Lab(tmpdir_path)


def aiopslab_server(make_server, llm, lab, **extra):
    settings = dict(EXECUTOR="aiopslab", AIOPSLAB_PYTHON=lab.python,
                    AIOPSLAB_DIR=lab.checkout, OPENAI_BASE_URL=llm.url,
                    OPENAI_API_KEY="test-key", NUM_INTERNAL_WORKERS=1, **lab.env)
    if REAL:
        settings.update(BACKEND_PROVISION="kind", EXEC_GRACE_SECONDS=300)
    settings.update(extra)
    return make_server(**settings)


def logs_of(s, task_id):
    return s.get(f"/api/v1/tasks/{task_id}/logs?limit=10000").json()["logs"]


def wait_session_ready(s, sid, timeout=120):
    deadline = time.time() + timeout
    while (g := s.get(f"/api/v1/sessions/{sid}").json())["status"] == "starting":
        assert time.time() < deadline, g
        time.sleep(0.1)
    return g


def step(s, sid, action):
    r = requests.post(f"{s.api}/sessions/{sid}/step", json={"action": action}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_run_records_the_whole_trajectory_and_leaves_the_cluster_clean(make_server, llm, lab):
    lab.create_cluster("worker-001-kind")
    # WORK_DIR as the default has it: relative to the server's directory.
    s = aiopslab_server(make_server, llm, lab, WORK_DIR="./data/work")
    t = s.submit(problem_id=DETECTION, max_steps=5,
                 agent_config={"model": "gpt-test", "temperature": 0.2, "max_tokens": 256})
    done = s.wait_status(t["id"], ("completed", "failed", "timeout"), timeout=300)
    assert done["status"] == "completed", (done, logs_of(s, t["id"]))
    r = done["result"]
    assert r["solved"] is True and r["reward"] == 1.0 and r["task_type"] == "detection"
    assert r["output"] == "VALID_SUBMISSION", "the enum's name, as the README shows"
    assert r["results"]["Detection Accuracy"] == "Correct" and r["results"]["steps"] == 2
    assert r["metrics"]["steps_taken"] == 2 and r["session_id"]

    conv = s.get(f"/api/v1/tasks/{t['id']}/conversations").json()["conversations"]
    assert len(conv) == 1 and conv[0]["session_id"] == r["session_id"]
    msgs = conv[0]["messages"]
    assert [(m["role"], m["step"]) for m in msgs] == [
        ("system", 0), ("user", 0), ("user", 1), ("assistant", 1), ("user", 2), ("assistant", 2)]
    assert "exec_shell" in msgs[0]["content"] and "submit" in msgs[0]["content"]
    assert "```" in msgs[1]["content"], "AIOpsLab's instructions ask for a fenced block"
    assert msgs[2]["content"] == "Please take the next action"
    # exec_shell ran in this worker's own cluster, not in the default `kind` one
    assert "geo" in msgs[4]["content"] and "CrashLoopBackOff" in msgs[4]["content"], msgs[4]
    assert "No such container" not in msgs[4]["content"]
    assert msgs[3]["metadata"]["model"] == "gpt-test-0613"
    assert msgs[3]["metadata"]["usage"]["completion_tokens"] == 12
    assert conv[0]["total_tokens"] == 312 + 512
    assert conv[0]["model_config"]["model"] == "gpt-test"

    assert [len(q["body"]["messages"]) for q in llm.requests] == [3, 5]
    q = llm.requests[0]
    assert q["path"] == "/v1/chat/completions" and q["auth"] == "Bearer test-key"
    assert q["body"]["model"] == "gpt-test" and q["body"]["temperature"] == 0.2
    assert q["body"]["max_tokens"] == 256

    logs = logs_of(s, t["id"])
    phases = {e["context"].get("phase") for e in logs}
    assert {"init", "check", "deploy", "inject", "step", "eval"} <= phases
    printed = [e["message"] for e in logs if e["context"].get("source") == "aiopslab"]
    assert any(m.startswith("Session ID:") for m in printed)
    # rich's console output and colorama's codes arrive as whole, plain lines
    assert not [m for m in printed if "\x1b" in m]
    assert f"Waiting for all pods in namespace '{HOTEL}' to be ready..." in printed, printed
    lab.assert_clean("worker-001-kind", runs=1)
    if not REAL:
        assert any(c.startswith("docker exec worker-001-kind-control-plane ")
                   for c in lab.calls())
        assert not any("docker exec kind-control-plane" in c for c in lab.calls())
        assert any(c.startswith("kubectl --context kind-worker-001-kind get namespaces")
                   for c in lab.calls()), "the worker checked its cluster after the run"
    assert os.path.isdir(os.path.join(s.workdir, "data", "work", "worker-001-kind", t["id"]))

    # no shared cache: the same problem again asks the model again, on a clean cluster
    t2 = s.submit(problem_id=DETECTION, max_steps=5, agent_config={"model": "gpt-test"})
    assert s.wait_status(t2["id"], ("completed", "failed"), timeout=300)["status"] == "completed"
    assert len(llm.requests) == 4
    lab.assert_clean("worker-001-kind", runs=2)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_runs_model_calls_go_through_the_gateway_and_are_recorded(make_server, llm, lab):
    lab.create_cluster("worker-001-kind")
    # The task names its upstream; the server holds its key (the runner's environment
    # carries only the gateway and the task's own key).
    s = aiopslab_server(make_server, llm, lab, OPENAI_API_KEY="", LLM_KEY_ENVS="LAB_KEY",
                        LAB_KEY="lab-secret")
    t = s.submit(problem_id=DETECTION, max_steps=5,
                 agent_config={"model": "gpt-test", "base_url": llm.url,
                               "api_key_env": "LAB_KEY"})
    done = s.wait_status(t["id"], ("completed", "failed", "timeout"), timeout=300)
    assert done["status"] == "completed", (done, logs_of(s, t["id"]))
    assert [q["auth"] for q in llm.requests] == ["Bearer lab-secret"] * 2
    calls = s.get(f"/api/v1/tasks/{t['id']}/llm-calls").json()["calls"]
    deadline = time.time() + 10
    while len(calls) < 2 and time.time() < deadline:
        time.sleep(0.1)
        calls = s.get(f"/api/v1/tasks/{t['id']}/llm-calls").json()["calls"]
    assert [c["request"] for c in calls] == [q["body"] for q in llm.requests]
    assert [c["model"] for c in calls] == ["gpt-test-0613"] * 2
    assert calls[1]["message"]["content"].startswith("Action:")
    # Its conversation lines stay as they were.
    conv = s.get(f"/api/v1/tasks/{t['id']}/conversations").json()["conversations"]
    assert [m["role"] for m in conv[0]["messages"]][-1] == "assistant"


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_long_history_is_trimmed_to_the_context_budget(make_server, llm, lab):
    lab.create_cluster("worker-001-kind")
    # by request count: what the model is sent is trimmed, so it cannot count turns
    llm.script = lambda n: fenced('submit("Yes")') if len(llm.requests) > 6 else \
        fenced(f'exec_shell("kubectl get pods -n {HOTEL}")')
    s = aiopslab_server(make_server, llm, lab)
    t = s.submit(problem_id=DETECTION, max_steps=10,
                 agent_config={"model": "m", "max_context_tokens": 1000})
    done = s.wait_status(t["id"], ("completed", "failed"), timeout=300)
    assert done["status"] == "completed", done
    sizes = [len(q["body"]["messages"]) for q in llm.requests]
    full = [3 + 2 * i for i in range(len(sizes))]
    assert len(sizes) == 7 and sizes[0] == 3, sizes
    assert any(a < b for a, b in zip(sizes, full)), (sizes, "nothing was trimmed")
    for q in llm.requests:
        assert q["body"]["messages"][0]["role"] == "system", "the API docs stay"
        assert q["body"]["messages"][-1]["role"] == "user", "the newest input is sent"
    warned = [e for e in logs_of(s, t["id"]) if "over 1000 tokens" in e["message"]]
    assert warned and warned[0]["level"] == "warning"
    # the stored trajectory is whole all the same
    conv = s.get(f"/api/v1/tasks/{t['id']}/conversations").json()["conversations"][0]
    assert conv["total_messages"] == 2 + 2 * 7


@standin_only
@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_catalog_takes_each_application_from_the_registry(make_server, llm, lab):
    s = aiopslab_server(make_server, llm, lab, NUM_INTERNAL_WORKERS=0,
                        PROBLEM_VALIDATION="strict")
    body = s.get("/api/v1/problems").json()
    got = {p["id"]: (p["task_type"], p.get("application"), p.get("namespace"))
           for p in body["problems"]}
    assert got["auth_miss_mongodb-detection-1"] == ("detection", "SocialNetwork",
                                                    "test-social-network")
    assert got["k8s_target_port-misconfig-localization-1"] == (
        "localization", "SocialNetwork", "test-social-network")
    assert got["noop_detection_social_network-1"][1] == "SocialNetwork"
    assert got["noop_detection_hotel_reservation-1"][1] == "HotelReservation"
    assert got["redeploy_without_PV-detection-1"] == ("detection", "HotelReservation", HOTEL)
    assert got[DETECTION] == ("detection", "HotelReservation", HOTEL)
    assert len(got) == 11, "the stand-in's registry, not the built-in list"
    r = s.post("/api/v1/tasks", json={"problem_id": "misconfig_app_hotel_res-detection-2"})
    assert r.status_code == 422 and DETECTION in r.json()["detail"]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_builtin_catalog_has_each_problems_application(server):
    got = {p["id"]: (p.get("application"), p.get("namespace"))
           for p in server.get("/api/v1/problems").json()["problems"]}
    assert len(got) == 89
    assert got["auth_miss_mongodb-analysis-1"] == ("SocialNetwork", "test-social-network")
    assert got["revoke_auth_mongodb-detection-1"] == ("HotelReservation", HOTEL)
    assert got["redeploy_without_PV-mitigation-1"] == ("HotelReservation", HOTEL)
    assert got["container_kill-localization"] == ("HotelReservation", HOTEL)
    assert got["astronomy_shop_cart_service_failure-detection-1"] == ("AstronomyShop",
                                                                      "astronomy-shop")
    assert got["flower_node_stop-detection"] == ("Flower", None)


def break_pythonpath(lab):
    lab.env["PYTHONPATH"] = ""


def drop_config(lab):
    os.unlink(os.path.join(lab.checkout, "aiopslab", "config.yml"))


def drop_kube_config(lab):
    os.unlink(os.path.join(lab.home, ".kube", "config"))


SETUP_FAILURES = [
    ("no checkout", {"AIOPSLAB_DIR": "/nonexistent"}, None,
     "AIOpsLab is not importable", "AIOPSLAB_DIR"),
    ("no config.yml", {}, drop_config, "config.yml is missing", "config.yml.example"),
    ("no kube config", {}, drop_kube_config, ".kube/config is missing",
     "kind export kubeconfig"),
    ("a missing dependency", {}, break_pythonpath, "dependency 'wandb' is missing",
     "install AIOpsLab's dependencies"),
    ("no model key", {"OPENAI_API_KEY": ""}, None, "no API key", "set OPENAI_API_KEY"),
    ("no cluster", {}, "no-cluster", "kind-worker-001-kind is unreachable",
     "BACKEND_PROVISION=kind"),
]


@standin_only
@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("case", SETUP_FAILURES, ids=[c[0] for c in SETUP_FAILURES])
def test_a_setup_failure_ends_the_task_with_one_line_saying_what_to_do(make_server, llm, lab,
                                                                       case):
    _, settings, breakage, says, advice = case
    if breakage != "no-cluster":
        lab.create_cluster("worker-001-kind")
    if callable(breakage):
        breakage(lab)
    s = aiopslab_server(make_server, llm, lab, **settings)
    t = s.submit(problem_id=DETECTION)
    done = s.wait_status(t["id"], ("failed", "completed"), timeout=120)
    assert done["status"] == "failed", done
    assert says in done["error"] and advice in done["error"], done["error"]
    assert "\n" not in done["error"] and "without sending a result" not in done["error"]
    assert done["result"]["error_class"] == "infrastructure"
    assert llm.requests == []


@standin_only
@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_server_keeps_its_own_pythonpath_for_the_lister_and_the_runs(make_server, llm, lab):
    """wandb lives only on the server's PYTHONPATH: listing and running both need it."""
    lab.create_cluster("worker-001-kind")
    s = aiopslab_server(make_server, llm, lab)
    assert len(s.get("/api/v1/problems").json()["problems"]) == 11
    t = s.submit(problem_id=DETECTION)
    assert s.wait_status(t["id"], ("completed", "failed"), timeout=120)["status"] == "completed"


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_session_takes_actions_as_aiopslab_does(make_server, llm, lab):
    """The trainer is the agent: actions reach AIOpsLab's parser unchanged, so a bare one
    gets its format error back and a fenced one works."""
    lab.create_cluster("worker-001-kind")
    s = aiopslab_server(make_server, llm, lab, OPENAI_API_KEY="")   # no model needed
    sid = s.post("/api/v1/sessions", json={"problem_id": DETECTION, "max_steps": 6}).json()["id"]
    g = wait_session_ready(s, sid)
    assert g["status"] == "ready", g
    assert "Hotel Reservation" in g["task_description"] and "```" in g["instructions"]
    assert {"exec_shell", "submit"} <= set(g["actions"])
    bare = f'exec_shell("kubectl get pods -n {HOTEL}")'
    a = step(s, sid, bare)
    assert a["step"] == 1 and FORMAT_ERROR in a["observation"] and a["done"] is False
    a = step(s, sid, fenced(bare))
    assert a["step"] == 2 and "CrashLoopBackOff" in a["observation"] and a["done"] is False
    a = step(s, sid, fenced('submit("Yes")'))
    assert a["step"] == 3 and a["done"] is True and a["reward"] == 1.0
    assert a["observation"] == "VALID_SUBMISSION"
    assert a["results"]["Detection Accuracy"] == "Correct"
    t = s.wait_status(sid, "completed", timeout=120)
    assert t["result"]["reward"] == 1.0 and t["result"]["output"] == "VALID_SUBMISSION"
    msgs = [m for c in s.get(f"/api/v1/tasks/{sid}/conversations").json()["conversations"]
            for m in c["messages"]]
    assert [m["role"] for m in msgs] == ["system", "user"] + ["assistant", "user"] * 3
    assert msgs[2]["content"] == bare, "stored exactly as the trainer sent it"
    lab.assert_clean("worker-001-kind", runs=1)


def start_mid_run(s, llm, lab, interactive, **task):
    """A task (or session) stopped in the middle: the fault is injected and the run is
    waiting on its model (or its trainer)."""
    if interactive:
        sid = s.post("/api/v1/sessions", json={"problem_id": DETECTION, **task}).json()["id"]
        assert wait_session_ready(s, sid)["status"] == "ready"
        return sid
    llm.hold.clear()
    t = s.submit(problem_id=DETECTION, max_steps=5, **task)
    assert llm.held.wait(120), logs_of(s, t["id"])
    return t["id"]


STOPS = ["cancel", "close", "timeout", "server-sigterm"]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
@pytest.mark.parametrize("how", STOPS)
def test_however_a_run_is_stopped_the_cluster_is_left_clean(make_server, llm, lab, how):
    lab.create_cluster("worker-001-kind")
    s = aiopslab_server(make_server, llm, lab)
    if how == "cancel":
        tid = start_mid_run(s, llm, lab, False)
        assert s.post(f"/api/v1/tasks/{tid}/cancel").status_code == 200
        end = s.wait_status(tid, "cancelled", timeout=60)
    elif how == "close":
        tid = start_mid_run(s, llm, lab, True)
        assert s.post(f"/api/v1/sessions/{tid}/close").json()["status"] == "cancelled"
        end = s.wait_status(tid, "cancelled", timeout=60)
    elif how == "timeout":
        # long enough for the run to reach its model on a loaded machine first
        tid = start_mid_run(s, llm, lab, False, parameters={"timeout": 15})
        end = s.wait_status(tid, "timeout", timeout=120)
    else:
        tid = start_mid_run(s, llm, lab, False)
        s.stop()
        s.start()
        end = s.wait_status(tid, "failed", timeout=60)
    assert end["status"] != "completed"
    llm.hold.set()
    # the runner recovered the fault and removed the application before it exited
    deadline = time.time() + 60
    while lab.namespaces("worker-001-kind") and time.time() < deadline:
        time.sleep(0.2)
    lab.assert_clean("worker-001-kind", runs=1)
    cleanup = [e["message"] for e in logs_of(s, tid) if e["context"].get("phase") == "cleanup"]
    assert any(m.startswith("cleaning up") for m in cleanup), cleanup
    # and the next run on that worker starts from a clean cluster
    t = s.submit(problem_id=DETECTION, max_steps=5)
    done = s.wait_status(t["id"], ("completed", "failed"), timeout=300)
    assert done["status"] == "completed", (done, logs_of(s, t["id"]))
    assert done["worker_id"] == "worker-001-kind"
    lab.assert_clean("worker-001-kind", runs=2)


# ---- the cluster between runs (stand-in clusters only) ----

def command_script(tmpdir_path, body):
    """A `command` executor that does `body` (shell) to its cluster, then succeeds."""
    path = os.path.join(tmpdir_path, "agent.sh")
    with open(path, "w") as f:
        f.write("#!/bin/sh\nread task\n" + body + "\n"
                'echo \'{"type":"result","success":true,"output":"ok"}\'\n')
    os.chmod(path, 0o755)
    return path


def checked(s, runs, wid="worker-001-kind"):
    """Waits for the worker's check of its cluster after its runs-th run."""
    return wait_worker(s, lambda w: w["metadata"].get("cluster_runs") == runs and
                       w["metadata"].get("cluster_check") == "clean" and
                       w["status"] == "idle", wid=wid)


def wait_worker(s, check, timeout=60, wid="worker-001-kind"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        w = s.get(f"/api/v1/workers/{wid}").json()
        if check(w):
            return w
        time.sleep(0.1)
    raise AssertionError(w)


@standin_only
@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_namespace_left_by_a_run_is_deleted_before_the_next_claim(make_server, lab,
                                                                    tmpdir_path):
    agent = command_script(tmpdir_path, f"kubectl create namespace {HOTEL} >/dev/null")
    s = make_server(BACKEND_PROVISION="kind", EXECUTOR="command", EXECUTOR_COMMAND=agent,
                    NUM_INTERNAL_WORKERS=1, **lab.env)
    for n in (1, 2):
        t = s.submit()
        assert s.wait_status(t["id"], ("completed", "failed"))["status"] == "completed"
        checked(s, n)
        assert lab.namespaces("worker-001-kind") == set()
    deletes = [c for c in lab.calls() if f"delete namespace {HOTEL}" in c]
    assert len(deletes) == 2 and "--context kind-worker-001-kind" in deletes[0]
    assert f"namespace {HOTEL} was left on the cluster by the last run" in s.log()


@standin_only
@pytest.mark.parametrize("backend", ["sqlite"])
def test_an_unhealthy_cluster_is_recreated_and_the_worker_is_offline_meanwhile(make_server, lab,
                                                                              tmpdir_path):
    nr = os.path.join(lab.state, "clusters", "worker-001-kind", "notready")
    agent = command_script(tmpdir_path, f"touch {nr}")
    fail_create = os.path.join(lab.state, "fail_create", "worker-001-kind")
    s = make_server(BACKEND_PROVISION="kind", EXECUTOR="command", EXECUTOR_COMMAND=agent,
                    NUM_INTERNAL_WORKERS=1, PROVISION_RETRY_SECONDS=1, **lab.env)
    # provisioned (the row reads idle once registered, before provisioning starts)
    wait_worker(s, lambda w: w["metadata"].get("provision") == "ready" and w["status"] == "idle")
    open(fail_create, "w").close()      # the recreation fails at first
    t = s.submit()
    assert s.wait_status(t["id"], ("completed", "failed"))["status"] == "completed"
    w = wait_worker(s, lambda w: w["metadata"].get("cluster_check") == "failed")
    assert w["status"] == "offline"
    assert "docker is not running" in w["metadata"]["cluster_error"]
    t2 = s.submit()
    time.sleep(1.5)
    assert s.task(t2["id"])["status"] == "pending", "a worker repairing its cluster claims nothing"
    os.unlink(fail_create)
    assert s.wait_status(t2["id"], ("completed", "failed"), timeout=30)["status"] == "completed"
    calls = lab.calls()
    assert calls.count("kind delete cluster --name worker-001-kind") >= 2
    w = wait_worker(s, lambda w: w["metadata"].get("cluster_check") == "clean", timeout=30)
    assert "cluster_error" not in w["metadata"]


@standin_only
@pytest.mark.parametrize("backend", ["sqlite"])
def test_cluster_recycle_after_runs(make_server, lab, tmpdir_path):
    agent = command_script(tmpdir_path, "true")
    s = make_server(BACKEND_PROVISION="kind", EXECUTOR="command", EXECUTOR_COMMAND=agent,
                    NUM_INTERNAL_WORKERS=1, CLUSTER_RECYCLE_AFTER_RUNS=2, **lab.env)
    for _ in range(5):
        t = s.submit()
        assert s.wait_status(t["id"], ("completed", "failed"))["status"] == "completed"
    checked(s, 1)     # runs 1, 2 (recycled), 3, 4 (recycled), 5
    calls = lab.calls()
    assert calls.count("kind delete cluster --name worker-001-kind") == 2, calls
    assert "recycled after 2 runs" in s.log()


@standin_only
@pytest.mark.parametrize("backend", ["sqlite"])
def test_without_provisioning_a_broken_cluster_keeps_the_worker_offline(make_server, llm, lab):
    lab.create_cluster("worker-001-kind")
    s = aiopslab_server(make_server, llm, lab, PROVISION_RETRY_SECONDS=1)
    t = s.submit(problem_id=DETECTION)
    assert s.wait_status(t["id"], ("completed", "failed"), timeout=120)["status"] == "completed"
    checked(s, 1)
    unhealthy = lab.touch("clusters", "worker-001-kind", "unhealthy")
    t = s.submit(problem_id=DETECTION)     # fails: the cluster is down, then the check fails
    s.wait_status(t["id"], ("completed", "failed"), timeout=120)
    w = wait_worker(s, lambda w: w["metadata"].get("cluster_check") == "failed")
    assert w["status"] == "offline" and "connection to the server" in \
        w["metadata"]["cluster_error"]
    t = s.submit(problem_id=DETECTION)
    time.sleep(1.5)
    assert s.task(t["id"])["status"] == "pending"
    os.unlink(unhealthy)
    assert s.wait_status(t["id"], ("completed", "failed"), timeout=120)["status"] == "completed"


@standin_only
@pytest.mark.parametrize("backend", ["sqlite"])
def test_an_external_worker_checks_its_cluster_between_runs(make_server, make_worker, lab,
                                                            tmpdir_path):
    agent = command_script(tmpdir_path, f"kubectl create namespace {HOTEL} >/dev/null")
    s = make_server(NUM_INTERNAL_WORKERS=0)
    make_worker(s, "worker-007-kind", "--backend-type", "default", BACKEND_PROVISION="kind",
                EXECUTOR="command", EXECUTOR_COMMAND=agent, **lab.env)
    for _ in range(2):
        t = s.submit()
        assert s.wait_status(t["id"], ("completed", "failed"))["status"] == "completed"
    deadline = time.time() + 30
    while len([c for c in lab.calls() if f"delete namespace {HOTEL}" in c]) < 2:
        assert time.time() < deadline, lab.calls()
        time.sleep(0.1)
    assert lab.namespaces("worker-007-kind") == set()


# ---- Kind provisioning (from before; stand-in clusters) ----

@standin_only
@pytest.mark.parametrize("backend", ["sqlite"])
def test_kind_provisioning_gives_each_worker_its_cluster(make_server, lab, tmpdir_path):
    lab.create_cluster("worker-002-kind")
    lab.touch("clusters", "worker-002-kind", "unhealthy")   # exists but does not answer
    script = os.path.join(tmpdir_path, "env.py")
    with open(script, "w") as f:
        f.write("#!/usr/bin/python3\nimport json, os, sys\nsys.stdin.readline()\n"
                "print(json.dumps({'type': 'result', 'success': True, 'output': {k: "
                "os.environ.get(k) for k in ('KUBECONFIG', 'KUBE_CONTEXT', 'AIOPSLAB_CLUSTER')},"
                " 'cwd': os.getcwd()}))\n")
    os.chmod(script, 0o755)
    s = make_server(BACKEND_PROVISION="kind", NUM_INTERNAL_WORKERS=2, EXECUTOR="command",
                    EXECUTOR_COMMAND=script, **lab.env)
    deadline = time.time() + 30
    while time.time() < deadline:
        ws = s.get("/api/v1/workers").json()["workers"]
        if len(ws) == 2 and all(w["metadata"].get("provision") == "ready" for w in ws):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"workers not provisioned: {ws}")
    calls = lab.calls()
    assert "kind create cluster --name worker-001-kind --wait 300s" in calls
    assert "kind delete cluster --name worker-002-kind" in calls, "unhealthy: recreated"
    assert "kind create cluster --name worker-002-kind --wait 300s" in calls
    for w in ws:
        kubeconfig = w["metadata"]["kubeconfig"]
        assert os.path.isabs(kubeconfig) and kubeconfig.endswith(f"kube/{w['id']}.yaml")
        assert open(kubeconfig).read() == f"current-context: kind-{w['id']}\n"
        assert w["metadata"]["kube_context"] == f"kind-{w['id']}"
    t = s.submit()
    done = s.wait_status(t["id"], ("completed", "failed"))
    out = done["result"]["output"]
    assert out["KUBE_CONTEXT"] == f"kind-{done['worker_id']}"
    assert out["AIOPSLAB_CLUSTER"] == done["worker_id"]
    assert out["KUBECONFIG"].endswith(f"kube/{done['worker_id']}.yaml")
    assert f"/{done['worker_id']}/{t['id']}" in done["result"]["cwd"]


@standin_only
@pytest.mark.parametrize("backend", ["sqlite"])
def test_failed_provisioning_shows_on_the_worker_and_eats_no_task(make_server, lab):
    lab.touch("fail_create", "worker-001-kind")
    s = make_server(BACKEND_PROVISION="kind", NUM_INTERNAL_WORKERS=1,
                    PROVISION_RETRY_SECONDS=1, **lab.env)
    w = wait_worker(s, lambda w: w["metadata"].get("provision") == "failed", timeout=20)
    assert w["status"] == "offline"
    assert "docker is not running" in w["metadata"]["provision_error"]
    t = s.submit(parameters={"simulate": {"steps": 1, "step_seconds": 0.01}})
    time.sleep(1.5)
    assert s.task(t["id"])["status"] == "pending", "a worker without a cluster claims nothing"
    os.unlink(os.path.join(lab.state, "fail_create", "worker-001-kind"))
    done = s.wait_status(t["id"], ("completed", "failed"), timeout=30)
    assert done["status"] == "completed"
    assert s.get("/api/v1/workers/worker-001-kind").json()["metadata"]["provision"] == "ready"
