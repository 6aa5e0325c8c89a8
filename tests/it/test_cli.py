"""The CLI client driven end to end against a running server."""
import json
import os
import subprocess

import pytest

from conftest import BIN, fast

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])


def cli(server, *args, check=None):
    p = subprocess.run([BIN, *args, "--api", server.url], capture_output=True, text=True,
                       timeout=120)
    if check is not None:
        assert p.returncode == check, (args, p.returncode, p.stdout, p.stderr)
    return p


def test_submit_wait_exit_codes_and_params(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=2)
    p = cli(s, "submit", "--problem-id", "misconfig_app_hotel_res-detection-1", "--wait",
            "--param", "simulate.steps=2", "--param", "simulate.step_seconds=0.01",
            "--param", "agent_config.model=gpt-4o", "--priority", "3", "--json", check=0)
    t = json.loads(p.stdout)
    assert t["status"] == "completed" and t["priority"] == 3
    assert t["parameters"]["agent_config"] == {"model": "gpt-4o"}
    assert t["parameters"]["simulate"] == {"steps": 2, "step_seconds": 0.01}
    assert "completed" in p.stderr
    p = cli(s, "submit", "--problem-id", "p", "--wait", "--parameters",
            json.dumps(fast(outcome="failure")), check=1)
    assert "ended failed" in p.stderr and "wrong" in p.stderr
    p = cli(s, "submit", "--problem-id", "p", check=0)
    task_id = p.stdout.strip()
    assert s.task(task_id)["problem_id"] == "p"
    # errors are the server's detail, never a raw dump
    p = cli(s, "submit", "--problem-id", "bad id", check=2)
    assert "problem_id must be a string" in p.stderr and "{" not in p.stderr
    cli(s, "submit", check=2)
    # options are checked before anything is sent: a typo is not a silent 0
    total = s.get("/api/v1/tasks").json()["total"]
    p = cli(s, "submit", "--problem-id", "p", "--priority", "high", check=2)
    assert "--priority must be a whole number" in p.stderr
    p = cli(s, "submit", "--problem-id", "p", "--max-steps", "10x", check=2)
    assert "--max-steps must be a whole number" in p.stderr
    p = cli(s, "submit", "--problem-id", "p", "--agent-config", "[1]", check=2)
    assert "--agent-config must be a JSON object" in p.stderr
    p = cli(s, "session", "open", "--problem-id", "p", "--timeout-minutes", "", check=2)
    assert "--timeout-minutes must be a whole number" in p.stderr
    assert s.get("/api/v1/tasks").json()["total"] == total
    cli(s, "frobnicate", check=2)
    p = subprocess.run([BIN, "status", "x", "--api", "http://127.0.0.1:1"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 3 and "cannot reach" in p.stderr


def test_batch_submit_twice_creates_nothing_new(make_server, tmpdir_path):
    s = make_server(NUM_INTERNAL_WORKERS=0)
    runs = os.path.join(tmpdir_path, "runs.jsonl")
    with open(runs, "w") as f:
        for i in range(25):
            f.write(json.dumps({"problem_id": f"p-{i}", "max_steps": 3}) + "\n")
        f.write("\n")
    p = cli(s, "submit", "--file", runs, check=0)
    assert "created 25, already there 0, refused 0" in p.stderr
    p = cli(s, "submit", "--file", runs, check=0)
    assert "created 0, already there 25, refused 0" in p.stderr
    assert s.get("/api/v1/tasks").json()["total"] == 25
    with open(runs, "a") as f:
        f.write('{"problem_id": "p-new"}\n{"max_steps": 3}\nnot json\n')
    p = cli(s, "submit", "--file", runs, check=2)
    assert "created 1, already there 25, refused 2" in p.stderr
    assert s.get("/api/v1/tasks").json()["total"] == 26
    # "-" reads a pipe, which cannot be read twice: every line is still submitted
    piped = "".join(json.dumps({"problem_id": f"q-{i}"}) + "\n" for i in range(5))
    p = subprocess.run([BIN, "submit", "--file", "-", "--api", s.url], input=piped,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "created 5, already there 0, refused 0" in p.stderr, p.stderr
    assert s.get("/api/v1/tasks").json()["total"] == 31


def test_status_list_logs_cancel(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=1)
    t = s.submit(parameters={"simulate": {"steps": 6, "step_seconds": 0.2}}, max_steps=6)
    # logs --follow streams until the task ends, with every line
    p = cli(s, "logs", t["id"], "--follow", check=0)
    assert sum("step " in line for line in p.stdout.splitlines()) == 6
    assert "task completed" in p.stdout
    p = cli(s, "status", t["id"], check=0)
    assert f"id         {t['id']}" in p.stdout and "status     completed" in p.stdout
    p = cli(s, "status", t["id"], "--json", check=0)
    assert json.loads(p.stdout)["status"] == "completed"
    p = cli(s, "status", "00000000-0000-0000-0000-000000000000", check=2)
    assert "not found" in p.stderr
    hang = s.submit(parameters=fast(steps=1, outcome="hang"))
    s.wait_status(hang["id"], "running")
    p = cli(s, "cancel", hang["id"], check=0)
    assert "cancelled" in p.stdout
    p = cli(s, "cancel", hang["id"], check=2)
    assert "cannot be cancelled" in p.stderr
    p = cli(s, "list", check=0)
    lines = p.stdout.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "PROBLEM", "WORKER", "CREATED"]
    assert any(hang["id"] in line and "cancelled" in line for line in lines)
    assert lines[-1] == "(2 of 2)"
    # columns are aligned: every row starts its STATUS column at the same place
    assert len({line.index(" ", 36) for line in lines[:-1]}) == 1
    p = cli(s, "list", "--status", "completed", "--json", check=0)
    assert [x["id"] for x in json.loads(p.stdout)["tasks"]] == [t["id"]]
    p = cli(s, "logs", t["id"], "--level", "error", check=0)
    assert p.stdout == ""


def test_export_a_few_hundred_tasks_and_read_them_back(make_server, tmpdir_path):
    s = make_server(NUM_INTERNAL_WORKERS=4)
    ids = [s.submit(problem_id=f"p-{i % 7}", parameters=fast(steps=1))["id"] for i in range(300)]
    for i in ids:
        s.wait_status(i, ("completed", "failed"), timeout=120)
    out = os.path.join(tmpdir_path, "export.jsonl")
    p = cli(s, "export", "--output", out, "--format", "jsonl", check=0)
    assert "exported" in p.stderr
    rows = [json.loads(line) for line in open(out)]
    assert [r["task"]["id"] for r in rows] == ids, "every task, in queue order"
    sample = rows[17]
    api = s.task(sample["task"]["id"])
    assert sample["task"] == api
    assert sample["logs"] == s.get(f"/api/v1/tasks/{api['id']}/logs").json()["logs"]
    convs = s.get(f"/api/v1/tasks/{api['id']}/conversations").json()["conversations"]
    # the database writes the export's JSON itself: it must say what the API says
    assert [{k: v for k, v in c.items() if k != "chat"} for c in sample["conversations"]] == convs
    for row in rows[:40]:
        assert row["logs"] == s.get(f"/api/v1/tasks/{row['task']['id']}/logs").json()["logs"]
    chat = sample["conversations"][0]["chat"]
    assert chat[0]["role"] == "system" and all(set(m) == {"role", "content"} for m in chat)
    assert [m["content"] for m in chat] == [m["content"] for m in convs[0]["messages"]]
    assert not [f for f in os.listdir(tmpdir_path) if ".part." in f], "the temp file is gone"

    whole = os.path.join(tmpdir_path, "export.json")
    cli(s, "export", "--output", whole, "--skip-logs", "--problem-id", "p-3", check=0)
    doc = json.load(open(whole))
    assert doc["task_count"] == len(doc["tasks"]) == len([i for n, i in enumerate(ids)
                                                           if n % 7 == 3])
    assert "logs" not in doc["tasks"][0] and doc["tasks"][0]["conversations"]
    assert doc["exported_at"].endswith("Z")
    r = s.get("/api/v1/export", params={"format": "xml"})
    assert r.status_code == 422
    p = cli(s, "export", "--output", os.path.join(tmpdir_path, "x"), "--format", "xml", check=2)
