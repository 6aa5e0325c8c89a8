"""The aiopslab executor and Kind provisioning, end to end through the server, against
stand-ins (this machine has no Kubernetes and no LLM): a stand-in `aiopslab` package with
the Orchestrator's signatures, stand-in `kind`/`kubectl` that record their calls, and an
OpenAI-compatible chat endpoint served here on 127.0.0.1. See tests/fixtures/README.md."""
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures")
STANDIN_AIOPSLAB = os.path.abspath(os.path.join(FIXTURES, "aiopslab"))
STANDIN_BIN = os.path.abspath(os.path.join(FIXTURES, "bin"))
DETECTION = "misconfig_app_hotel_res-detection-1"


class FakeLLM:
    """An OpenAI-compatible /v1/chat/completions: first a shell action, then a submit."""

    def __init__(self):
        self.requests = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "body": body,
                                       "auth": self.headers.get("Authorization")})
                turns = sum(m["role"] == "assistant" for m in body["messages"])
                content = ('Action: ```\nexec_shell("kubectl get pods -n test-hotel-reservation")\n```'
                           if turns == 0 else 'Action: ```\nsubmit("Yes")\n```')
                reply = json.dumps({
                    "id": "x", "model": body["model"] + "-0613",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 100 * len(body["messages"]),
                              "completion_tokens": 12,
                              "total_tokens": 100 * len(body["messages"]) + 12}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def llm():
    server = FakeLLM()
    yield server
    server.close()


@pytest.fixture
def standins(tmpdir_path):
    state = os.path.join(tmpdir_path, "standin-state")
    os.makedirs(os.path.join(state, "clusters"))
    os.makedirs(os.path.join(state, "unhealthy"))
    os.makedirs(os.path.join(state, "fail_create"))
    log = os.path.join(tmpdir_path, "standin.log")
    open(log, "w").close()
    env = {"PATH": STANDIN_BIN + ":" + os.environ["PATH"], "STANDIN_STATE": state,
           "STANDIN_LOG": log}

    class S:
        pass

    s = S()
    s.env, s.state, s.log_path = env, state, log
    s.calls = lambda: open(log).read().splitlines()
    s.cluster = lambda name, **flags: [open(os.path.join(state, d, name), "w").close()
                                       for d in ["clusters"] + [k for k in flags if flags[k]]]
    return s


def aiopslab_server(make_server, llm, standins, **extra):
    settings = dict(EXECUTOR="aiopslab", AIOPSLAB_PYTHON="/usr/bin/python3",
                    AIOPSLAB_DIR=STANDIN_AIOPSLAB, OPENAI_BASE_URL=llm.url,
                    OPENAI_API_KEY="test-key", NUM_INTERNAL_WORKERS=1, **standins.env)
    settings.update(extra)
    return make_server(**settings)


def test_runner_captures_the_whole_trajectory_with_standins(make_server, llm, standins):
    standins.cluster("worker-001-kind")
    s = aiopslab_server(make_server, llm, standins)
    t = s.submit(problem_id=DETECTION, max_steps=5,
                 agent_config={"model": "gpt-test", "temperature": 0.2, "max_tokens": 256})
    done = s.wait_status(t["id"], ("completed", "failed", "timeout"), timeout=60)
    assert done["status"] == "completed", (done, s.get(f"/api/v1/tasks/{t['id']}/logs").json())
    r = done["result"]
    assert r["solved"] is True and r["reward"] == 1.0 and r["task_type"] == "detection"
    assert r["results"]["Detection Accuracy"] == "Correct" and r["results"]["steps"] == 2
    assert r["metrics"]["steps_taken"] == 2 and r["session_id"]

    conv = s.get(f"/api/v1/tasks/{t['id']}/conversations").json()["conversations"]
    assert len(conv) == 1 and conv[0]["session_id"] == r["session_id"]
    msgs = conv[0]["messages"]
    assert [(m["role"], m["step"]) for m in msgs] == [
        ("system", 0), ("user", 0), ("user", 1), ("assistant", 1), ("user", 2), ("assistant", 2)]
    assert "exec_shell" in msgs[0]["content"] and "submit" in msgs[0]["content"]
    assert "kind-worker-001-kind" in msgs[0]["content"], "the stand-in saw AIOPSLAB_CLUSTER"
    assert msgs[1]["content"].startswith("Is there an anomaly?")
    assert msgs[2]["content"] == "Please take the next action"
    assert "exec_shell" in msgs[3]["content"]
    assert "CrashLoopBackOff" in msgs[4]["content"], "the observation reaches the model"
    assert 'submit("Yes")' in msgs[5]["content"]
    assert msgs[3]["metadata"]["model"] == "gpt-test-0613"
    assert msgs[3]["metadata"]["usage"]["completion_tokens"] == 12
    assert conv[0]["total_tokens"] == 312 + 512
    assert conv[0]["model_config"]["model"] == "gpt-test"

    # the model was called with the agent_config, the key, and the whole history
    assert [len(q["body"]["messages"]) for q in llm.requests] == [3, 5]
    q = llm.requests[0]
    assert q["path"] == "/v1/chat/completions" and q["auth"] == "Bearer test-key"
    assert q["body"]["model"] == "gpt-test" and q["body"]["temperature"] == 0.2
    assert q["body"]["max_tokens"] == 256

    logs = s.get(f"/api/v1/tasks/{t['id']}/logs").json()["logs"]
    phases = {e["context"].get("phase") for e in logs}
    assert {"init", "check", "deploy", "inject", "step", "eval", "cleanup"} <= phases
    printed = [e for e in logs if e["context"].get("source") == "aiopslab"]
    assert any(e["message"].startswith("Session ID:") for e in printed)

    # no shared cache: the same problem again asks the model again
    t2 = s.submit(problem_id=DETECTION, max_steps=5, agent_config={"model": "gpt-test"})
    assert s.wait_status(t2["id"], ("completed", "failed"), timeout=60)["status"] == "completed"
    assert len(llm.requests) == 4


def test_catalog_lists_the_registry_of_the_standin(make_server, llm, standins):
    s = aiopslab_server(make_server, llm, standins, NUM_INTERNAL_WORKERS=0,
                        PROBLEM_VALIDATION="strict")
    body = s.get("/api/v1/problems").json()
    assert body["executor"] == "aiopslab"
    assert {p["id"]: p["task_type"] for p in body["problems"]} == {
        "misconfig_app_hotel_res-detection-1": "detection",
        "misconfig_app_hotel_res-localization-1": "localization",
        "k8s_target_port-misconfig-mitigation-1": "mitigation"}
    r = s.post("/api/v1/tasks", json={"problem_id": "misconfig_app_hotel_res-detection-2"})
    assert r.status_code == 422 and DETECTION in r.json()["detail"]


def test_missing_aiopslab_fails_with_what_to_install(make_server, llm, standins):
    standins.cluster("worker-001-kind")
    s = aiopslab_server(make_server, llm, standins, AIOPSLAB_DIR="/nonexistent")
    t = s.submit(problem_id=DETECTION)
    done = s.wait_status(t["id"], ("failed", "completed"), timeout=60)
    assert done["status"] == "failed"
    assert "AIOpsLab cannot be imported" in done["error"] and "AIOPSLAB_DIR" in done["error"]


def test_missing_api_key_fails_with_what_to_set(make_server, llm, standins):
    standins.cluster("worker-001-kind")
    s = aiopslab_server(make_server, llm, standins, OPENAI_API_KEY="")
    t = s.submit(problem_id=DETECTION, agent_config={"api_key_env": "MY_KEY"})
    done = s.wait_status(t["id"], ("failed", "completed"), timeout=60)
    assert done["status"] == "failed" and "set MY_KEY" in done["error"]


def test_unreachable_cluster_fails_the_task_with_the_reason(make_server, llm, standins):
    s = aiopslab_server(make_server, llm, standins)     # no stand-in cluster exists
    t = s.submit(problem_id=DETECTION)
    done = s.wait_status(t["id"], ("failed", "completed"), timeout=60)
    assert done["status"] == "failed"
    assert "kind-worker-001-kind is unreachable" in done["error"]
    assert "BACKEND_PROVISION=kind" in done["error"]


def test_kind_provisioning_gives_each_worker_its_cluster_with_standins(make_server, standins,
                                                                      tmpdir_path):
    standins.cluster("worker-002-kind", unhealthy=True)   # exists but does not answer
    script = os.path.join(tmpdir_path, "env.py")
    with open(script, "w") as f:
        f.write("#!/usr/bin/python3\nimport json, os, sys\nsys.stdin.readline()\n"
                "print(json.dumps({'type': 'result', 'success': True, 'output': {k: "
                "os.environ.get(k) for k in ('KUBECONFIG', 'KUBE_CONTEXT', 'AIOPSLAB_CLUSTER')},"
                " 'cwd': os.getcwd()}))\n")
    os.chmod(script, 0o755)
    s = make_server(BACKEND_PROVISION="kind", NUM_INTERNAL_WORKERS=2, EXECUTOR="command",
                    EXECUTOR_COMMAND=script, **standins.env)
    deadline = time.time() + 30
    while time.time() < deadline:
        ws = s.get("/api/v1/workers").json()["workers"]
        if len(ws) == 2 and all(w["metadata"].get("provision") == "ready" for w in ws):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"workers not provisioned: {ws}")
    calls = standins.calls()
    assert "kind create cluster --name worker-001-kind --wait 300s" in calls
    assert "kind delete cluster --name worker-002-kind" in calls, "unhealthy: recreated"
    assert "kind create cluster --name worker-002-kind --wait 300s" in calls
    for w in ws:
        kubeconfig = w["metadata"]["kubeconfig"]
        assert kubeconfig.endswith(f"kube/{w['id']}.yaml")
        assert open(os.path.join(tmpdir_path, kubeconfig)
                    if not os.path.isabs(kubeconfig) else kubeconfig).read() == \
            f"current-context: kind-{w['id']}\n"
        assert w["metadata"]["kube_context"] == f"kind-{w['id']}"
        assert any(c.startswith(f"kind export kubeconfig --name {w['id']} --kubeconfig")
                   for c in calls)
    # a task sees its worker's cluster and no other
    t = s.submit()
    done = s.wait_status(t["id"], ("completed", "failed"))
    out = done["result"]["output"]
    assert out["KUBE_CONTEXT"] == f"kind-{done['worker_id']}"
    assert out["AIOPSLAB_CLUSTER"] == done["worker_id"]
    assert out["KUBECONFIG"].endswith(f"kube/{done['worker_id']}.yaml")
    assert f"/{done['worker_id']}/{t['id']}" in done["result"]["cwd"]


def test_failed_provisioning_shows_on_the_worker_and_eats_no_task(make_server, standins):
    standins.cluster("worker-001-kind")
    os.unlink(os.path.join(standins.state, "clusters", "worker-001-kind"))
    open(os.path.join(standins.state, "fail_create", "worker-001-kind"), "w").close()
    s = make_server(BACKEND_PROVISION="kind", NUM_INTERNAL_WORKERS=1,
                    PROVISION_RETRY_SECONDS=1, **standins.env)
    deadline = time.time() + 20
    while time.time() < deadline:
        w = s.get("/api/v1/workers/worker-001-kind").json()
        if w["metadata"].get("provision") == "failed":
            break
        time.sleep(0.1)
    assert w["status"] == "offline"
    assert "docker is not running" in w["metadata"]["provision_error"]
    t = s.submit(parameters={"simulate": {"steps": 1, "step_seconds": 0.01}})
    time.sleep(1.5)
    assert s.task(t["id"])["status"] == "pending", "a worker without a cluster claims nothing"
    assert s.get("/api/v1/workers/worker-001-kind").json()["status"] == "offline"
    os.unlink(os.path.join(standins.state, "fail_create", "worker-001-kind"))
    done = s.wait_status(t["id"], ("completed", "failed"), timeout=30)
    assert done["status"] == "completed"
    assert s.get("/api/v1/workers/worker-001-kind").json()["metadata"]["provision"] == "ready"


def test_an_interactive_session_runs_aiopslabs_own_loop(make_server, llm, standins):
    """The trainer is the agent: AIOpsLab's start_problem asks our agent for each action,
    the observation goes back to the trainer, and the reward comes from AIOpsLab's results."""
    standins.cluster("worker-001-kind")
    s = aiopslab_server(make_server, llm, standins, OPENAI_API_KEY="")   # no model needed
    pid = "misconfig_app_hotel_res-detection-1"
    sid = s.post("/api/v1/sessions", json={"problem_id": pid, "max_steps": 5}).json()["id"]
    deadline = time.time() + 60
    while (g := s.get(f"/api/v1/sessions/{sid}").json())["status"] == "starting":
        assert time.time() < deadline, g
        time.sleep(0.1)
    assert g["status"] == "ready", g
    assert "hotel reservation" in g["task_description"] and "submit" in g["instructions"]
    assert any(k.startswith("exec_shell") for k in g["actions"])
    a = requests.post(f"{s.api}/sessions/{sid}/step", timeout=60,
                      json={"action": 'exec_shell("kubectl get pods -n test-hotel-reservation")'}).json()
    assert a["step"] == 1 and "CrashLoopBackOff" in a["observation"] and a["done"] is False
    a = requests.post(f"{s.api}/sessions/{sid}/step", timeout=60,
                      json={"action": '```\nsubmit("Yes")\n```'}).json()
    assert a["step"] == 2 and a["done"] is True and a["reward"] == 1.0
    assert a["results"]["Detection Accuracy"] == "Correct"
    t = s.wait_status(sid, "completed")
    assert t["result"]["reward"] == 1.0 and t["result"]["task_type"] == "detection"
    msgs = [m for c in s.get(f"/api/v1/tasks/{sid}/conversations").json()["conversations"]
            for m in c["messages"]]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant",
                                         "user"]
    # a closed session stops AIOpsLab's loop and runs the problem's clean-up
    sid = s.post("/api/v1/sessions", json={"problem_id": pid}).json()["id"]
    while s.get(f"/api/v1/sessions/{sid}").json()["status"] == "starting":
        time.sleep(0.1)
    assert s.post(f"/api/v1/sessions/{sid}/close").json()["status"] == "cancelled"
    s.wait_status(sid, "cancelled")
