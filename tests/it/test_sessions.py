"""Interactive sessions on the simulated environment: ready -> steps -> submit -> reward,
ordering, idle close, cancel and crash mid-session, and a step sent to another server."""
import os
import signal
import threading
import time

import pytest
import requests

LOCALIZE = "misconfig_app_hotel_res-localization-1"
DETECT = "misconfig_app_hotel_res-detection-1"


def open_session(s, **body):
    body.setdefault("problem_id", LOCALIZE)
    r = s.post("/api/v1/sessions", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "starting"
    return r.json()["id"]


def wait_ready(s, sid, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        g = s.get(f"/api/v1/sessions/{sid}").json()
        if g["status"] != "starting":
            return g
        time.sleep(0.05)
    raise AssertionError(f"session {sid} never became ready: {g}")


def step(s, sid, action, **kw):
    return requests.post(f"{s.api}/sessions/{sid}/step", json=dict(action=action, **kw),
                         timeout=90)


def running(argv):
    """pids whose command line is exactly argv."""
    want = ("\0".join(argv) + "\0").encode()
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if f.read() == want:
                        pids.append(int(d))
            except OSError:
                pass
    return pids


def faulty_service(observation):
    for line in observation.splitlines():
        if "CrashLoopBackOff" in line:
            return line.split("-")[0]
    raise AssertionError(observation)


def test_a_session_from_ready_to_reward(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=1)
    sid = open_session(s, max_steps=10, metadata={"trainer": "t1"})
    g = wait_ready(s, sid)
    assert g["status"] == "ready" and g["step"] == 0
    assert "faulty" in g["task_description"] and g["instructions"]
    assert set(g["actions"]) >= {"exec_shell", "get_logs", "get_metrics", "submit"}
    r = step(s, sid, 'exec_shell("kubectl get pods -n test-hotel-reservation")')
    assert r.status_code == 200, r.text
    a = r.json()
    assert a["step"] == 1 and a["done"] is False and a["reward"] is None
    bad = faulty_service(a["observation"])
    r = step(s, sid, f'get_logs("test-hotel-reservation", "{bad}")')
    assert r.json()["step"] == 2 and "FATAL" in r.json()["observation"]
    r = step(s, sid, 'get_metrics("test-hotel-reservation", 5)')
    assert r.json()["step"] == 3 and "error_rate" in r.json()["observation"]
    r = step(s, sid, f'submit("{bad}")')
    a = r.json()
    assert a["step"] == 4 and a["done"] is True and a["reward"] == 1.0
    assert a["results"]["Localization Accuracy"] == "Correct"
    t = s.wait_status(sid, "completed")
    assert t["result"]["reward"] == 1.0 and t["mode"] == "interactive"
    g = s.get(f"/api/v1/sessions/{sid}").json()
    assert g["status"] == "done" and g["done"] is True and g["step"] == 4
    # a step after the end is refused
    r = step(s, sid, 'submit("geo")')
    assert r.status_code == 409 and "no more steps" in r.json()["detail"]
    # the trajectory is stored as a conversation and exported with its reward
    convs = s.get(f"/api/v1/tasks/{sid}/conversations").json()["conversations"]
    msgs = [m for c in convs for m in c["messages"]]
    assert [m["role"] for m in msgs[:2]] == ["system", "user"]
    acts = [(m["step"], m["content"]) for m in msgs if m["role"] == "assistant"]
    assert [a[0] for a in acts] == [1, 2, 3, 4] and acts[3][1] == f'submit("{bad}")'
    obs = [m["step"] for m in msgs if m["role"] == "user"][1:]
    assert obs == [1, 2, 3, 4]
    lines = s.get("/api/v1/export?format=jsonl").text.strip().splitlines()
    assert any(f'"{sid}"' in l and '"reward":1' in l for l in lines)


def test_a_wrong_submission_earns_nothing_and_max_steps_ends_it(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=2)
    sid = open_session(s, problem_id=DETECT)
    wait_ready(s, sid)
    a = step(s, sid, 'submit("No")').json()
    assert a["done"] is True and a["reward"] == 0.0
    sid2 = open_session(s, max_steps=2)
    wait_ready(s, sid2)
    assert step(s, sid2, "get_traces(\"test-hotel-reservation\", 5)").json()["done"] is False
    a = step(s, sid2, "nonsense").json()
    assert a["done"] is True and a["reward"] == 0.0 and "max_steps" in a["observation"]
    assert s.wait_status(sid2, "completed")["result"]["reward"] == 0.0


def test_steps_are_strictly_ordered(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=1)
    sid = open_session(s)
    # not ready yet (or not even claimed): refused, not queued
    early = step(s, sid, 'exec_shell("kubectl get pods")')
    if early.status_code == 409:
        assert "not ready" in early.json()["detail"]
    else:
        assert early.status_code == 200   # it became ready in between: a normal step
    wait_ready(s, sid)
    # wait_seconds 0: the step is taken and answered later; a second one is refused
    before = s.get(f"/api/v1/sessions/{sid}").json()["step"]
    r = step(s, sid, 'exec_shell("sleep-free")', wait_seconds=0)
    assert r.status_code == 202
    n = r.json()["step"]
    assert n == before + 1
    r2 = step(s, sid, 'exec_shell("kubectl get pods")')
    if r2.status_code == 409:
        assert "in flight" in r2.json()["detail"]
    else:                                 # the first was answered already
        assert r2.json()["step"] == n + 1
    # many concurrent steps: each step number is handed out once, none interleaved
    results = []

    def go(i):
        results.append(step(s, sid, f'exec_shell("echo {i}")'))

    threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    ok = [r.json()["step"] for r in results if r.status_code == 200]
    assert len(ok) == len(set(ok)) and len(ok) >= 1
    assert all(r.status_code in (200, 409) for r in results)
    msgs = [m for c in s.get(f"/api/v1/tasks/{sid}/conversations").json()["conversations"]
            for m in c["messages"] if m["role"] == "assistant"]
    steps = [m["step"] for m in msgs]
    assert steps == sorted(steps) and len(steps) == len(set(steps))
    assert s.post(f"/api/v1/sessions/{sid}/step", data="{").status_code == 400
    assert step(s, sid, "").status_code == 422
    assert s.get("/api/v1/sessions/00000000-0000-0000-0000-000000000000").status_code == 404


def test_idle_sessions_are_closed(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=1, SESSION_IDLE_MINUTES=1)
    sid = open_session(s)
    wait_ready(s, sid)
    # make it look idle for a minute without waiting one: the check runs every 5 s
    if s.db_url.startswith("sqlite"):
        import sqlite3
        db = sqlite3.connect(s.db_url[len("sqlite://"):])
        db.execute("UPDATE sessions SET last_activity_at = last_activity_at - 120000000")
        db.commit()
        db.close()
    else:
        import subprocess
        subprocess.run(["psql", "-q", s.db_url, "-c",
                        "UPDATE sessions SET last_activity_at = last_activity_at - 120000000"],
                       check=True, capture_output=True)
    t = s.wait_status(sid, "cancelled", timeout=30)
    logs = s.get(f"/api/v1/tasks/{sid}/logs").json()["logs"]
    assert any("no step for 1 minutes" in l["message"] for l in logs)
    assert s.get(f"/api/v1/sessions/{sid}").json()["status"] == "cancelled"
    deadline = time.time() + 20   # the worker stops the environment and is free again
    while any(w["status"] == "busy" for w in s.get("/api/v1/workers").json()["workers"]):
        assert time.time() < deadline
        time.sleep(0.2)


def test_cancel_mid_step_and_close(make_server, tmpdir_path):
    # an environment that never answers its step: the step's wait ends with the session
    script = os.path.join(tmpdir_path, "stuck.py")
    with open(script, "w") as f:
        f.write("import json, sys, time\nsys.stdin.readline()\n"
                "print(json.dumps({'type': 'ready', 'task_description': 'd', 'instructions': 'i',"
                " 'actions': {'x': 'x()'}}), flush=True)\n"
                "sys.stdin.readline()\ntime.sleep(600)\n")
    s = make_server(NUM_INTERNAL_WORKERS=1, EXECUTOR="command",
                    EXECUTOR_COMMAND=f"/usr/bin/python3 {script}")
    sid = open_session(s)
    wait_ready(s, sid)
    box = {}
    th = threading.Thread(target=lambda: box.update(r=step(s, sid, "x()", wait_seconds=60)))
    th.start()
    time.sleep(1)
    r = s.post(f"/api/v1/sessions/{sid}/close")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    th.join(30)
    assert box["r"].status_code == 409 and "ended" in box["r"].json()["detail"]
    s.wait_status(sid, "cancelled")
    assert s.post(f"/api/v1/sessions/{sid}/close").status_code == 200   # idempotent
    # the child is gone
    deadline = time.time() + 15
    while time.time() < deadline and running(["/usr/bin/python3", script]):
        time.sleep(0.2)
    assert not running(["/usr/bin/python3", script])


def test_a_killed_environment_fails_the_session_with_the_reason(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=1)
    sid = open_session(s)
    wait_ready(s, sid)
    pids = running([os.environ["TASKEXEC_BIN"], "simulate"])
    assert len(pids) == 1
    os.kill(pids[0], signal.SIGKILL)
    t = s.wait_status(sid, "failed")
    assert "signal 9" in t["error"]
    g = s.get(f"/api/v1/sessions/{sid}").json()
    assert g["status"] == "failed" and g["done"] is True
    assert step(s, sid, "x()").status_code == 409


@pytest.mark.parametrize("backend", ["postgres"])
def test_a_step_sent_to_the_other_server(make_server):
    host = make_server(WORKER_NAME_PREFIX="a-", NUM_INTERNAL_WORKERS=1)
    other = make_server(WORKER_NAME_PREFIX="b-", NUM_INTERNAL_WORKERS=0)
    sid = open_session(other)
    wait_ready(other, sid)
    assert host.task(sid)["worker_id"].startswith("a-")
    t0 = time.time()
    a = step(other, sid, 'exec_shell("kubectl get pods -n test-hotel-reservation")').json()
    assert a["step"] == 1 and "CrashLoopBackOff" in a["observation"]
    assert time.time() - t0 < 5
    bad = faulty_service(a["observation"])
    a = step(host, sid, f'submit("{bad}")').json()
    assert a["reward"] == 1.0
    assert other.wait_status(sid, "completed")["result"]["reward"] == 1.0


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_simulated_incident_reads_actions_as_aiopslab_does(make_server):
    """One fenced block is an action (AIOpsLab's form); two blocks, or an open fence, get
    the format error; a bare call is still taken, for trying it by hand."""
    s = make_server(NUM_INTERNAL_WORKERS=1)
    sid = open_session(s, max_steps=10)
    g = wait_ready(s, sid)
    assert "```" in g["instructions"]
    pods = 'exec_shell("kubectl get pods -n test-hotel-reservation")'
    a = step(s, sid, f"I should look:\n```\n{pods}\n```").json()
    assert "CrashLoopBackOff" in a["observation"]
    for bad in (f"```\n{pods}\n```\n```\n{pods}\n```", f"```\n{pods}", f"```{pods}```"):
        a = step(s, sid, bad).json()
        assert "Format validation failure" in a["observation"] and not a["done"], a
    a = step(s, sid, pods).json()
    assert "CrashLoopBackOff" in a["observation"]
    a = step(s, sid, f'```\nsubmit("{faulty_service(a["observation"])}")\n```').json()
    assert a["done"] is True and a["reward"] == 1.0


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_session_command_line(make_server):
    import subprocess
    s = make_server(NUM_INTERNAL_WORKERS=1)
    bin_ = os.environ["TASKEXEC_BIN"]
    r = subprocess.run([bin_, "session", "play", "--problem-id", LOCALIZE, "--api", s.url],
                       input='exec_shell("kubectl get pods -n test-hotel-reservation")\n',
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "Which service is faulty?" in r.stdout and "[step 1]" in r.stdout
    bad = faulty_service(r.stdout.split("[step 1]")[1])
    # stdin ended before the episode did: the session was closed
    assert "closed" in r.stderr
    r = subprocess.run([bin_, "session", "open", "--problem-id", LOCALIZE, "--api", s.url,
                        "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    import json
    sid = json.loads(r.stdout)["id"]
    r = subprocess.run([bin_, "session", "step", sid, "--action", f'submit("{bad}")',
                        "--api", s.url], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "done: reward 1" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([bin_, "session", "step", sid, "--action", "x()", "--api", s.url],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no more steps" in r.stderr


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_readme_example_trains_against_the_simulated_environment(make_server, tmpdir_path):
    import re
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    readme = open(os.path.join(root, "README.md")).read()
    section = readme.split("## Interactive sessions", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    s = make_server(NUM_INTERNAL_WORKERS=1)
    code = code.replace('API = "http://127.0.0.1:8000/api/v1"', f'API = "{s.api}"')
    assert s.api in code and len(code.splitlines()) <= 35
    r = subprocess.run(["/usr/bin/python3", "-c", code], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert "reward 1.0" in r.stdout and "Localization Accuracy" in r.stdout


def test_an_external_worker_hosts_a_session(make_server, make_worker):
    s = make_server(NUM_INTERNAL_WORKERS=0)
    w = make_worker(s, "ext-001-kind", "--backend-type", "remote")
    sid = open_session(s, backend_type="remote", max_steps=5)
    g = wait_ready(s, sid)
    assert g["status"] == "ready" and s.task(sid)["worker_id"] == "ext-001-kind"
    a = step(s, sid, 'exec_shell("kubectl get pods -n test-hotel-reservation")').json()
    assert a["step"] == 1 and "CrashLoopBackOff" in a["observation"]
    r = step(s, sid, "again()", wait_seconds=0)
    assert r.status_code == 202
    assert step(s, sid, "third()").status_code in (200, 409)  # in flight, or already answered
    while s.get(f"/api/v1/sessions/{sid}").json()["step_in_flight"]:
        time.sleep(0.05)
    a = step(s, sid, f'submit("{faulty_service(a["observation"])}")').json()
    assert a["done"] is True and a["reward"] == 1.0
    t = s.wait_status(sid, "completed")
    assert t["result"]["reward"] == 1.0
    msgs = [m for c in s.get(f"/api/v1/tasks/{sid}/conversations").json()["conversations"]
            for m in c["messages"]]
    assert [m["role"] for m in msgs][:4] == ["system", "user", "assistant", "user"]
    # the worker routes check the lease like every other worker route
    r = requests.get(f"{s.api}/workers/ext-001-kind/tasks/{sid}/session/next",
                     headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401


def test_steps_parked_on_another_server_get_their_own_answers(make_server):
    """Three sessions hosted through the worker API of one server, each stepped through a
    second server where the steps park: that server's hub finds each answer in the store
    (told by PostgreSQL's notification, or by its poll on SQLite), reading it without
    holding the lock the other steps need, and gives each request its own answer; a step
    nobody answers comes back 202 when its wait_seconds run out."""
    s = make_server(NUM_INTERNAL_WORKERS=0)
    other = make_server(WORKER_NAME_PREFIX="b-", NUM_INTERNAL_WORKERS=0)
    hosts = {}                                  # session id -> (worker id, token)
    for i in range(3):
        wid = f"ext-00{i}-kind"
        r = s.post("/api/v1/workers/register", json={"worker_id": wid, "backend_type": "remote"})
        assert r.status_code == 201, r.text
        token = {"Authorization": f"Bearer {r.json()['token']}"}
        open_session(s, backend_type="remote", max_steps=5)
        r = s.post(f"/api/v1/workers/{wid}/claim", headers=token)
        assert r.status_code == 200, r.text
        sid = r.json()["id"]
        r = s.post(f"/api/v1/workers/{wid}/tasks/{sid}/session/ready", headers=token,
                   json={"task_description": f"task {i}", "instructions": "act"})
        assert r.status_code == 200, r.text
        hosts[sid] = (wid, token)
    replies = {}
    threads = [threading.Thread(target=lambda sid=sid: replies.update(
        {sid: step(other, sid, f"act-{sid}()", wait_seconds=30)})) for sid in hosts]
    [t.start() for t in threads]
    for sid in hosts:
        deadline = time.time() + 30
        while not s.get(f"/api/v1/sessions/{sid}").json()["step_in_flight"]:
            assert time.time() < deadline
            time.sleep(0.05)
    for sid, (wid, token) in reversed(list(hosts.items())):
        r = s.post(f"/api/v1/workers/{wid}/tasks/{sid}/session/answer", headers=token,
                   json={"step": 1, "answer": {"observation": f"seen {sid}", "done": False,
                                               "reward": None, "results": None}})
        assert r.status_code == 200, r.text
    [t.join(timeout=60) for t in threads]
    for sid in hosts:
        assert replies[sid].status_code == 200, replies[sid].text
        assert replies[sid].json()["step"] == 1
        assert replies[sid].json()["observation"] == f"seen {sid}"
    sid = next(iter(hosts))
    t0 = time.time()
    r = step(other, sid, "unanswered()", wait_seconds=1)
    assert r.status_code == 202 and r.json()["step"] == 2 and r.json()["status"] == "working"
    assert time.time() - t0 >= 0.9   # it waited its wait_seconds for an answer
