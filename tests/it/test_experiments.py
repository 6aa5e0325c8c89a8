"""Experiments (CONTRACT.md "Experiments"): problems x agent configs x attempts as one
object, on both backends: counts, the scoreboard checked against the tasks' own results,
CSV equal to JSON, rerun of only the right slots, cancel, the CLI, and bad input."""
import csv
import io
import json
import subprocess
import time

import pytest

from conftest import BIN

HOTEL = "misconfig_app_hotel_res-*"          # 4 problems of the built-in catalog
PORT = "k8s_target_port-misconfig-detection-*"  # 3 problems

GOOD = {"name": "good"}
BAD = {"name": "bad", "simulate": {"outcome": "failure"}}


def create(s, **spec):
    spec.setdefault("name", "sweep")
    spec.setdefault("parameters", {"simulate": {"steps": 2, "step_seconds": 0.01}})
    r = s.post("/api/v1/experiments", json=spec)
    assert r.status_code == 201, r.text
    return r.json()


def wait_ended(s, eid, timeout=90):
    deadline = time.time() + timeout
    while time.time() < deadline:
        e = s.get(f"/api/v1/experiments/{eid}").json()
        if e["status"] != "running":
            return e
        time.sleep(0.2)
    raise AssertionError(f"experiment still running: {e}")


def all_tasks(s, eid):
    r = s.get(f"/api/v1/experiments/{eid}/tasks", params={"limit": 1000})
    assert r.status_code == 200, r.text
    return r.json()["tasks"]


def test_counts_and_scoreboard_match_the_tasks_results(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=3)
    e = create(s, problems=[PORT], agent_configs=[GOOD, BAD], attempts=2, max_steps=9)
    assert e["task_count"] == 12 and e["status"] == "running"
    assert e["problems"] == [f"k8s_target_port-misconfig-detection-{i}" for i in (1, 2, 3)]
    e = wait_ended(s, e["id"])
    assert e["status"] == "completed" and e["progress"] == 1.0 and e["ended_at"]
    assert e["counts"]["completed"] == 6 and e["counts"]["failed"] == 6
    tasks = all_tasks(s, e["id"])
    assert len(tasks) == 12
    slots = {(t["slot"]["problem_id"], t["slot"]["agent_config_index"], t["slot"]["attempt"])
             for t in tasks}
    assert len(slots) == 12
    for t in tasks:
        assert t["experiment_id"] == e["id"] and t["parameters"]["max_steps"] == 9
        assert t["parameters"]["agent_config"] == [GOOD, BAD][t["slot"]["agent_config_index"]]
        assert t["problem_id"] == t["slot"]["problem_id"]
    # the task list and export filter by experiment too
    listed = s.get("/api/v1/tasks", params={"experiment_id": e["id"], "limit": 100}).json()
    assert listed["total"] == 12
    s.submit(problem_id="outside-the-experiment", parameters={"simulate": {"steps": 1}})
    lines = s.get("/api/v1/export", params={"format": "jsonl", "experiment_id": e["id"]}).text
    exported = [json.loads(x) for x in lines.splitlines() if x.strip()]
    assert sorted(x["task"]["id"] for x in exported) == sorted(t["id"] for t in tasks)
    assert all(x["logs"] and x["logs"][0]["attempt"] == 1 for x in exported)
    board = s.get(f"/api/v1/experiments/{e['id']}/scoreboard").json()
    assert board["experiment_id"] == e["id"]
    assert len(board["rows"]) == 6 and len(board["totals"]) == 2
    for row in board["rows"]:
        mine = [t for t in tasks if t["problem_id"] == row["problem_id"]
                and t["slot"]["agent_config_index"] == row["agent_config_index"]]
        solved = [bool(t["result"] and t["result"].get("success")) for t in mine]
        tokens = []
        for t in mine:
            convs = s.get(f"/api/v1/tasks/{t['id']}/conversations").json()["conversations"]
            tokens.append(sum(c["total_tokens"] or 0 for c in convs))
        steps = [t["result"]["metrics"]["steps_taken"] for t in mine]
        assert row["attempts"] == 2 and row["ended"] == 2
        assert row["solved"] == sum(solved)
        assert row["pass_at_1"] == pytest.approx(sum(solved) / 2)
        assert row["pass_at_k"] == (1 if any(solved) else 0)
        assert row["mean_reward"] == pytest.approx(sum(solved) / 2)
        assert row["mean_steps"] == pytest.approx(sum(steps) / 2)
        assert row["mean_tokens"] == pytest.approx(sum(tokens) / 2)
        assert row["mean_duration_seconds"] > 0
        assert row["agent_config"] == [GOOD, BAD][row["agent_config_index"]]
    good, bad = board["totals"]
    assert good["problem_id"] == "*" and good["pass_at_1"] == 1 and good["pass_at_k"] == 1
    assert bad["pass_at_1"] == 0 and bad["pass_at_k"] == 0 and bad["attempts"] == 6
    # CSV: the same numbers, then the totals
    r = s.get(f"/api/v1/experiments/{e['id']}/scoreboard", params={"format": "csv"})
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/csv")
    lines = list(csv.DictReader(io.StringIO(r.text)))
    assert len(lines) == 8
    for line, row in zip(lines, board["rows"] + board["totals"]):
        assert line["problem_id"] == row["problem_id"]
        assert int(line["agent_config_index"]) == row["agent_config_index"]
        assert json.loads(line["agent_config"]) == row["agent_config"]
        for k in ("attempts", "ended", "solved"):
            assert int(line[k]) == row[k]
        for k in ("pass_at_1", "pass_at_k", "mean_reward", "mean_steps", "mean_tokens",
                  "mean_duration_seconds"):
            assert float(line[k]) == pytest.approx(row[k], rel=1e-5)
    listing = s.get("/api/v1/experiments").json()
    assert listing["total"] == 1 and listing["experiments"][0]["id"] == e["id"]


def test_rerun_makes_new_attempts_of_only_the_failed_slots(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=2)
    e = wait_ended(s, create(s, problems=[PORT], agent_configs=[GOOD, BAD])["id"])
    before = {t["id"]: t for t in all_tasks(s, e["id"])}
    r = s.post(f"/api/v1/experiments/{e['id']}/rerun", json={"only": "failed"})
    assert r.status_code == 200 and r.json()["created"] == 3, r.text
    e2 = s.get(f"/api/v1/experiments/{e['id']}").json()
    assert e2["task_count"] == 6 and e2["status"] == "running" or e2["counts"]["failed"] == 3
    e2 = wait_ended(s, e["id"])
    after = all_tasks(s, e["id"])
    assert len(after) == 6
    kept = [t for t in after if t["id"] in before]
    new = [t for t in after if t["id"] not in before]
    assert len(kept) == 3 and all(t["status"] == "completed" for t in kept)
    assert len(new) == 3 and all(t["slot"]["agent_config_index"] == 1 for t in new)
    # the replaced tasks are kept, outside the experiment's current list
    for old in before.values():
        if old["status"] == "failed":
            assert s.task(old["id"])["status"] == "failed"
    # "unsolved" takes every ended slot that did not solve: the same three here
    r = s.post(f"/api/v1/experiments/{e['id']}/rerun", json={"only": "unsolved"})
    assert r.json()["created"] == 3
    bad = s.post(f"/api/v1/experiments/{e['id']}/rerun", json={"only": "everything"})
    assert bad.status_code == 422 and "only" in bad.text


def test_cancel_ends_every_task_not_yet_ended(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=1)
    e = create(s, problems=[HOTEL], parameters={"simulate": {"steps": 40, "step_seconds": 0.25}},
               max_steps=40)
    deadline = time.time() + 20
    while s.get(f"/api/v1/experiments/{e['id']}").json()["counts"]["running"] < 1:
        assert time.time() < deadline
        time.sleep(0.1)
    r = s.post(f"/api/v1/experiments/{e['id']}/cancel")
    assert r.status_code == 200, r.text
    e = wait_ended(s, e["id"], timeout=30)
    assert e["status"] == "cancelled" and e["counts"]["cancelled"] == 4 and e["cancelled_at"]
    assert s.get("/api/v1/tasks", params={"status": "running"}).json()["total"] == 0
    assert s.post(f"/api/v1/experiments/{e['id']}/rerun").status_code == 409
    assert s.post("/api/v1/experiments/00000000-0000-0000-0000-000000000000/cancel"
                  ).status_code == 404
    assert s.get("/api/v1/experiments/nope").status_code == 404


@pytest.mark.parametrize("spec,field", [
    ({"problems": [HOTEL]}, "name"),
    ({"name": "x"}, "problems"),
    ({"name": "x", "problems": []}, "problems"),
    ({"name": "x", "problems": ["no_such_problem_*"]}, "problems"),
    ({"name": "x", "problems": [HOTEL], "attempts": 0}, "attempts"),
    ({"name": "x", "problems": [HOTEL], "attempts": 101}, "attempts"),
    ({"name": "x", "problems": [HOTEL], "agent_configs": []}, "agent_configs"),
    ({"name": "x", "problems": [HOTEL], "agent_configs": ["gpt"]}, "agent_configs"),
    ({"name": "x", "problems": [HOTEL], "max_steps": 0}, "max_steps"),
    ({"name": "x", "problems": [HOTEL], "attempts": 3}, "problems"),  # 12 > 10 tasks
])
def test_bad_specs_are_422_naming_the_field_and_create_nothing(make_server, spec, field):
    s = make_server(NUM_INTERNAL_WORKERS=0, MAX_EXPERIMENT_TASKS=10)
    r = s.post("/api/v1/experiments", json=spec)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == field, r.text
    assert s.get("/api/v1/experiments").json()["total"] == 0
    assert s.get("/api/v1/tasks").json()["total"] == 0


def test_cli_runs_a_spec_and_prints_the_scoreboard(make_server, tmpdir_path):
    s = make_server(NUM_INTERNAL_WORKERS=2)
    spec = f"{tmpdir_path}/spec.json"
    with open(spec, "w") as f:
        json.dump({"name": "cli", "problems": [PORT], "agent_configs": [GOOD, BAD],
                   "parameters": {"simulate": {"steps": 1, "step_seconds": 0.01}}}, f)
    p = subprocess.run([BIN, "experiment", "run", spec, "--wait", "--api", s.url],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stderr        # the BAD config's tasks failed
    assert "PASS@1" in p.stdout and "k8s_target_port-misconfig-detection-1" in p.stdout
    assert "100%" in p.stdout and "0%" in p.stdout
    eid = s.get("/api/v1/experiments").json()["experiments"][0]["id"]
    p = subprocess.run([BIN, "experiment", "scoreboard", eid, "--csv", "--api", s.url],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout == s.get(
        f"/api/v1/experiments/{eid}/scoreboard?format=csv").text
    p = subprocess.run([BIN, "experiment", "list", "--api", s.url], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and eid in p.stdout and "completed" in p.stdout
    p = subprocess.run([BIN, "experiment", "rerun", eid, "--api", s.url], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and "3 tasks queued again" in p.stdout


def test_the_readme_spec_is_accepted(make_server):
    import os
    import re
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    readme = open(os.path.join(root, "README.md")).read()
    section = readme.split("## Experiments: sweeps of rollouts as one object", 1)[1]
    spec = json.loads(re.search(r"<<'JSON'\n(.*?)\nJSON", section, re.S).group(1))
    s = make_server(NUM_INTERNAL_WORKERS=0)
    r = s.post("/api/v1/experiments", json=spec)
    assert r.status_code == 201, r.text
    e = r.json()
    assert e["task_count"] == 5 * 2 * 3 and e["attempts"] == 3
    task = s.get(f"/api/v1/experiments/{e['id']}/tasks", params={"limit": 1}).json()["tasks"][0]
    assert task["max_retries"] == 2 and task["parameters"]["max_steps"] == 20
    assert s.post(f"/api/v1/experiments/{e['id']}/cancel").json()["status"] == "cancelled"


def test_an_ended_experiment_calls_back_once_and_is_announced(make_server):
    import sys
    import os
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from test_webhooks import Receiver, wait_for
    from test_events import Stream
    rec = Receiver(fail_first=1)
    try:
        s = make_server(NUM_INTERNAL_WORKERS=2, WEBHOOK_RETRY_BASE_MS=100)
        stream = Stream(s.api + "/events?types=experiment")
        e = create(s, problems=[PORT], agent_configs=[GOOD, BAD], callback_url=rec.url)
        wait_ended(s, e["id"])
        assert wait_for(lambda: len(rec.accepted()) == 1, 30), rec.deliveries
        _, _, headers, body = rec.accepted()[0]
        sent = json.loads(body)
        assert headers["X-Taskexec-Event"] == "experiment.finished"
        assert sent["id"] == e["id"] and sent["status"] == "completed"
        assert len(sent["scoreboard"]["rows"]) == 6
        assert [d[1] for d in rec.deliveries] == [500, 200]   # retried after a failure
        # no task of the experiment has a callback of its own
        assert all(t["callback_url"] is None for t in all_tasks(s, e["id"]))
        assert wait_for(lambda: any(t == "experiment" for _, t, _ in stream.events), 10)
        ev = [d for _, t, d in stream.events if t == "experiment"][0]
        assert ev["experiment_id"] == e["id"] and ev["status"] == "completed"
        time.sleep(1.5)              # several heartbeats later: still one delivery, one event
        assert len(rec.accepted()) == 1
        assert sum(t == "experiment" for _, t, _ in stream.events) == 1
        stream.resp.close()
    finally:
        rec.close()


def test_two_reruns_at_once_add_each_slot_once(make_server):
    import threading
    s = make_server(NUM_INTERNAL_WORKERS=0)     # nothing runs: the new tasks stay pending
    e = create(s, problems=[PORT], agent_configs=[GOOD])
    ids = [t["id"] for t in all_tasks(s, e["id"])]
    for i in ids:                               # end them as failed, as a lost run would
        assert s.post(f"/api/v1/tasks/{i}/cancel").status_code == 200
    created = []

    def rerun():
        r = s.post(f"/api/v1/experiments/{e['id']}/rerun", json={"only": "unsolved"})
        created.append(r.json()["created"])

    threads = [threading.Thread(target=rerun) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sum(created) == 3, created
    now = all_tasks(s, e["id"])
    assert len(now) == 3 and all(t["status"] == "pending" for t in now)
    assert s.get("/api/v1/experiments/" + e["id"]).json()["task_count"] == 3
