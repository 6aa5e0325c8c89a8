"""The routes external workers speak: tokens, claims, ownership (403), terminal states (409)."""
import time
import uuid

import requests

from conftest import fast


def register(s, wid="ext-001-kind", **body):
    body.setdefault("backend_type", "ext")
    r = s.post("/api/v1/workers/register", json={"worker_id": wid, **body})
    assert r.status_code == 201, r.text
    w = r.json()
    assert w["id"] == wid and len(w["token"]) == 64
    return w["token"]


def auth(token):
    return {"Authorization": f"Bearer {token}"}


def test_register_validation(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=1)
    for body, field in (({}, "worker_id"), ({"worker_id": "a b"}, "worker_id"),
                        ({"worker_id": "register"}, "worker_id"),
                        ({"worker_id": "w", "backend_type": 3}, "backend_type"),
                        ({"worker_id": "w", "capabilities": []}, "capabilities"),
                        ({"worker_id": "w", "capabilities": {"supported_problems": "x"}},
                         "capabilities.supported_problems"),
                        ({"worker_id": "w", "capabilities": {"supported_problems": ["a b"]}},
                         "capabilities.supported_problems")):
        r = s.post("/api/v1/workers/register", json=body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["errors"][0]["field"] == field
    r = s.post("/api/v1/workers/register", json={"worker_id": "worker-001-kind"})
    assert r.status_code == 409, "an internal worker's name cannot be taken over"


def test_tokens_are_required_and_checked(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=0)
    token = register(s)
    hb = "/api/v1/workers/ext-001-kind/heartbeat"
    assert s.post(hb, json={}).status_code == 401
    assert s.post(hb, json={}, headers=auth("0" * 64)).status_code == 401
    assert s.post(hb, json={}, headers={"Authorization": token}).status_code == 401
    assert s.post("/api/v1/workers/nobody/heartbeat", json={},
                  headers=auth(token)).status_code == 404
    r = s.post(hb, json={"status": "idle"}, headers=auth(token))
    assert r.status_code == 200
    assert r.json()["message"] == "Heartbeat received" and r.json()["cancel"] == []
    # registering again issues a new token; the old one is stale
    new = register(s)
    assert s.post(hb, json={}, headers=auth(token)).status_code == 401
    assert s.post(hb, json={}, headers=auth(new)).status_code == 200
    assert s.post("/api/v1/workers/ext-001-kind/claim", headers=auth(token)).status_code == 401


def test_claim_run_and_complete(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=0)
    token = register(s, capabilities={"supported_problems": ["misconfig_*"]})
    claim = "/api/v1/workers/ext-001-kind/claim"
    assert s.post(claim, headers=auth(token)).status_code == 204
    other_backend = s.submit(backend_type="default")
    other_problem = s.submit(backend_type="ext", problem_id="auth_miss_mongodb-detection-1")
    t = s.submit(backend_type="ext", agent_config={"model": "m"})
    r = s.post(claim, headers=auth(token))
    assert r.status_code == 200, r.text
    task = r.json()
    assert task["id"] == t["id"] and task["status"] == "running"
    assert task["worker_id"] == "ext-001-kind" and task["lease"]["deadline"]
    assert s.post(claim, headers=auth(token)).status_code == 204
    assert s.task(other_backend["id"])["status"] == "pending"
    assert s.task(other_problem["id"])["status"] == "pending"
    w = s.get("/api/v1/workers/ext-001-kind").json()
    assert w["status"] == "busy" and w["current_task_id"] == t["id"] and w["internal"] is False

    base = f"/api/v1/workers/ext-001-kind/tasks/{t['id']}"
    r = s.post(base + "/logs", json={"level": "info", "message": "hello", "context": {"a": 1}},
               headers=auth(token))
    assert r.status_code == 200 and r.json()["accepted"] == 1
    r = s.post(base + "/logs", json={"logs": [{"message": "x"}, {"level": "error", "message": "y"}]},
               headers=auth(token))
    assert r.json()["accepted"] == 2
    assert s.post(base + "/logs", json={"level": "info"}, headers=auth(token)).status_code == 422
    r = s.post(base + "/conversations", json={"type": "message", "session_id": "s", "step": 0,
                                              "role": "system", "content": "sys"},
               headers=auth(token))
    assert r.status_code == 200
    r = s.post(base + "/conversations", json=[{"role": "assistant", "content": "act", "step": 1,
                                               "session_id": "s", "usage": {"total_tokens": 5}}],
               headers=auth(token))
    assert r.status_code == 200
    assert s.post(base + "/conversations", json={"role": "wizard", "content": "x"},
                  headers=auth(token)).status_code == 422
    # the original worker posts the result object itself
    r = s.post(base + "/complete", json={"success": True, "output": "ok"}, headers=auth(token))
    assert r.status_code == 200 and r.json()["status"] == "completed"
    done = s.task(t["id"])
    assert done["status"] == "completed" and done["result"] == {"success": True, "output": "ok"}
    logs = s.get(f"/api/v1/tasks/{t['id']}/logs").json()["logs"]
    assert [e["message"] for e in logs] == ["hello", "x", "y"]
    conv = s.get(f"/api/v1/tasks/{t['id']}/conversations").json()["conversations"][0]
    assert [m["content"] for m in conv["messages"]] == ["sys", "act"]
    assert conv["total_tokens"] == 5 and conv["model_config"] == {"model": "m"}
    # terminal is final
    for route, body in (("/complete", {"result": {}}), ("/fail", {"error": "x"}),
                        ("/logs", {"message": "late"})):
        assert s.post(base + route, json=body, headers=auth(token)).status_code == 409
    w = s.get("/api/v1/workers/ext-001-kind").json()
    assert w["status"] == "idle" and w["tasks_completed"] == 1


def test_ownership_is_enforced(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=0)
    a = register(s, "ext-a")
    b = register(s, "ext-b")
    t = s.submit(backend_type="ext")
    assert s.post("/api/v1/workers/ext-a/claim", headers=auth(a)).status_code == 200
    for route, body in (("/logs", {"message": "m"}), ("/complete", {"result": {}}),
                        ("/fail", {"error": "x"}), ("/conversations", {"role": "user",
                                                                        "content": "c"})):
        # b, with its own valid token, does not hold the task
        r = s.post(f"/api/v1/workers/ext-b/tasks/{t['id']}{route}", json=body, headers=auth(b))
        assert r.status_code == 403, (route, r.text)
        # b's token is not a's
        r = s.post(f"/api/v1/workers/ext-a/tasks/{t['id']}{route}", json=body, headers=auth(b))
        assert r.status_code == 401
    assert s.post(f"/api/v1/workers/ext-a/tasks/{uuid.uuid4()}/complete", json={},
                  headers=auth(a)).status_code == 404
    assert s.task(t["id"])["status"] == "running"
    # a pending task is not held by anyone
    p = s.submit(backend_type="none")
    assert s.post(f"/api/v1/workers/ext-a/tasks/{p['id']}/complete", json={},
                  headers=auth(a)).status_code == 403
    r = s.post(f"/api/v1/workers/ext-a/tasks/{t['id']}/fail",
               json={"error": "agent gave up", "status": "timeout"}, headers=auth(a))
    assert r.status_code == 200
    done = s.task(t["id"])
    assert done["status"] == "timeout" and done["error"] == "agent gave up"
    assert s.post(f"/api/v1/workers/ext-a/tasks/{t['id']}/fail", json={},
                  headers=auth(a)).status_code == 409


def test_fail_validation(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=0)
    a = register(s)
    t = s.submit(backend_type="ext")
    s.post("/api/v1/workers/ext-001-kind/claim", headers=auth(a))
    base = f"/api/v1/workers/ext-001-kind/tasks/{t['id']}/fail"
    assert s.post(base, json={}, headers=auth(a)).status_code == 422
    assert s.post(base, json={"error": "x", "status": "completed"},
                  headers=auth(a)).status_code == 422
    assert s.task(t["id"])["status"] == "running"


def test_heartbeat_carries_cancel_requests(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=0)
    a = register(s)
    t = s.submit(backend_type="ext")
    s.post("/api/v1/workers/ext-001-kind/claim", headers=auth(a))
    hb = "/api/v1/workers/ext-001-kind/heartbeat"
    body = {"status": "busy", "current_task_id": t["id"]}
    assert s.post(hb, json=body, headers=auth(a)).json()["cancel"] == []
    assert s.post(f"/api/v1/tasks/{t['id']}/cancel").status_code == 200
    assert s.post(hb, json=body, headers=auth(a)).json()["cancel"] == [t["id"]]
    r = s.post(f"/api/v1/workers/ext-001-kind/tasks/{t['id']}/complete", json={},
               headers=auth(a))
    assert r.status_code == 409


def test_silent_external_worker_is_reaped_and_reregistering_loses_its_run(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=0, HEARTBEAT_TIMEOUT_SECONDS=2)
    a = register(s)
    t1 = s.submit(backend_type="ext")
    s.post("/api/v1/workers/ext-001-kind/claim", headers=auth(a))
    done = s.wait_status(t1["id"], "failed", timeout=15)
    assert "ext-001-kind" in done["error"] and "heartbeat" in done["error"]
    assert s.get("/api/v1/workers/ext-001-kind").json()["status"] == "offline"
    # a restarted worker registers again: the task it held is failed, not left running
    a = register(s)
    t2 = s.submit(backend_type="ext")
    assert s.post("/api/v1/workers/ext-001-kind/claim", headers=auth(a)).status_code == 200
    register(s)
    done = s.task(t2["id"])
    assert done["status"] == "failed" and "registered again" in done["error"]


def test_a_batch_of_messages_from_several_sessions(make_server):
    """One POST whose messages interleave two sessions, some counting tokens and naming a
    model, then one more: each session's conversation counts its own messages in order,
    sums only the tokens given (none given: null), keeps the first model named, starts at
    its first message and ends at its last. (PostgreSQL inserts each run of messages of
    one session in one statement; SQLite one at a time: both must agree.)"""
    s = make_server(NUM_INTERNAL_WORKERS=0)
    token = register(s)
    t = s.submit(backend_type="ext", agent_config={"model": "cfg"})
    assert s.post("/api/v1/workers/ext-001-kind/claim", headers=auth(token)).status_code == 200
    base = f"/api/v1/workers/ext-001-kind/tasks/{t['id']}/conversations"
    batch = [
        {"session_id": "s1", "role": "system", "content": "a", "step": 0},
        {"session_id": "s1", "role": "assistant", "content": {"say": "b \"quoted\" \\"},
         "step": 1, "model": "m1", "usage": {"total_tokens": 5}},
        {"session_id": "s2", "role": "assistant", "content": "c", "model": "m2"},
        {"session_id": "s1", "role": "user", "content": "d", "step": 2,
         "usage": {"total_tokens": 3}},
    ]
    assert s.post(base, json=batch, headers=auth(token)).status_code == 200
    time.sleep(0.01)
    assert s.post(base, json=[{"session_id": "s1", "role": "assistant", "content": "e",
                               "model": "m3"}], headers=auth(token)).status_code == 200
    convs = s.get(f"/api/v1/tasks/{t['id']}/conversations").json()["conversations"]
    by = {c["session_id"]: c for c in convs}
    assert set(by) == {"s1", "s2"}
    s1, s2 = by["s1"], by["s2"]
    assert [m["content"] for m in s1["messages"]] == ["a", {"say": "b \"quoted\" \\"}, "d", "e"]
    assert [m["step"] for m in s1["messages"]] == [0, 1, 2, None]
    assert s1["total_messages"] == 4 and s1["total_tokens"] == 8 and s1["model_name"] == "m1"
    assert s1["started_at"] == s1["messages"][0]["timestamp"]
    assert s1["ended_at"] == s1["messages"][-1]["timestamp"] > s1["started_at"]
    assert s1["model_config"] == {"model": "cfg"}
    assert [m["content"] for m in s2["messages"]] == ["c"]
    assert s2["total_messages"] == 1 and s2["total_tokens"] is None and s2["model_name"] == "m2"
    assert s2["started_at"] == s2["ended_at"] == s2["messages"][0]["timestamp"]
