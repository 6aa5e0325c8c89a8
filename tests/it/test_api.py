"""The REST routes of CONTRACT.md against the real binary on SQLite: shapes, validation, errors."""
import json
import socket
import uuid

import requests

from conftest import fast

PROBLEM = "misconfig_app_hotel_res-detection-1"
TASK_KEYS = {"id", "problem_id", "status", "priority", "backend_type", "parameters", "metadata",
             "callback_url", "worker_id", "result", "error", "created_at", "updated_at",
             "started_at", "completed_at"}


def test_health_and_ready_shapes(server):
    r = server.get("/health")
    assert r.status_code == 200
    h = r.json()
    assert h["status"] in ("healthy", "degraded")
    assert h["database"]["connected"] is True
    assert isinstance(h["database"]["latency_ms"], (int, float))
    assert set(h["workers"]) >= {"total", "idle", "busy", "offline"}
    assert h["workers"]["total"] == 3
    assert set(h["queue"]) >= {"pending", "running", "completed"}
    assert "version" in h and h["timestamp"].endswith("Z")
    r = server.get("/ready")
    assert r.status_code == 200
    assert r.json() == {"ready": True, "database": True, "workers": True}


def test_every_answer_has_a_request_id(server):
    for r in (server.get("/health"), server.get("/nope"),
              server.post("/api/v1/tasks", data="{bad"),
              server.get("/api/v1/tasks", headers={"X-Request-ID": "trace-123"})):
        assert r.headers.get("X-Request-ID")
    r = server.get("/api/v1/tasks", headers={"X-Request-ID": "trace-123"})
    assert r.headers["X-Request-ID"] == "trace-123"
    e = server.get("/api/v1/tasks/" + str(uuid.uuid4())).json()
    assert e["request_id"] and e["type"] == "not_found" and "not found" in e["detail"]


def test_create_top_level_form(server):
    r = server.post("/api/v1/tasks", json={
        "problem_id": PROBLEM, "agent_config": {"model": "gpt-4", "temperature": 0.7},
        "max_steps": 3, "timeout_minutes": 5, "metadata": {"run": "a"}, "priority": 2,
        "callback_url": "http://127.0.0.1:9/cb", "backend_type": "default", "extra": 1,
        "simulate": fast()["simulate"]})
    assert r.status_code == 201, r.text
    t = r.json()
    assert TASK_KEYS <= set(t)
    uuid.UUID(t["id"])
    assert t["status"] == "pending"
    assert t["priority"] == 2
    assert t["metadata"] == {"run": "a"}
    assert t["callback_url"] == "http://127.0.0.1:9/cb"
    p = t["parameters"]
    assert p["max_steps"] == 3 and p["timeout_minutes"] == 5
    assert p["agent_config"] == {"model": "gpt-4", "temperature": 0.7}
    assert p["extra"] == 1, "unknown fields are kept in parameters"
    assert t["created_at"].endswith("Z") and t["started_at"] is None


def test_create_parameters_form_timeout_in_seconds(server):
    r = server.post("/api/v1/tasks", json={
        "problem_id": PROBLEM,
        "parameters": {"max_steps": 4, "timeout": 90, "agent_config": {"model": "gpt-4"}}})
    assert r.status_code == 201, r.text
    p = r.json()["parameters"]
    assert p["max_steps"] == 4 and p["timeout"] == 90 and p["timeout_minutes"] == 1.5
    assert p["agent_config"] == {"model": "gpt-4"}


def test_defaults_come_from_config(make_server):
    s = make_server(DEFAULT_MAX_STEPS=7, DEFAULT_TIMEOUT_MINUTES=11, NUM_INTERNAL_WORKERS=0)
    p = s.submit()["parameters"]
    assert p["max_steps"] == 7 and p["timeout_minutes"] == 11


def count(server):
    return server.get("/api/v1/tasks").json()["total"]


def test_validation_errors_name_the_field_and_write_nothing(make_server):
    server = make_server(NUM_INTERNAL_WORKERS=0)
    cases = [
        ({}, "problem_id"),
        ({"problem_id": ""}, "problem_id"),
        ({"problem_id": "x" * 257}, "problem_id"),
        ({"problem_id": "bad id"}, "problem_id"),
        ({"problem_id": PROBLEM, "max_steps": 0}, "max_steps"),
        ({"problem_id": PROBLEM, "max_steps": 1001}, "max_steps"),
        ({"problem_id": PROBLEM, "max_steps": "5"}, "max_steps"),
        ({"problem_id": PROBLEM, "timeout_minutes": 0}, "timeout_minutes"),
        ({"problem_id": PROBLEM, "timeout_minutes": 1441}, "timeout_minutes"),
        ({"problem_id": PROBLEM, "agent_config": "gpt"}, "agent_config"),
        ({"problem_id": PROBLEM, "metadata": [1]}, "metadata"),
        ({"problem_id": PROBLEM, "callback_url": "file:///etc/passwd"}, "callback_url"),
        ({"problem_id": PROBLEM, "priority": 1.5}, "priority"),
        ({"problem_id": PROBLEM, "backend_type": "a b"}, "backend_type"),
        ({"problem_id": PROBLEM, "parameters": "x"}, "parameters"),
        ({"problem_id": PROBLEM, "max_steps": 3, "parameters": {"max_steps": 5}}, "max_steps"),
        ({"problem_id": PROBLEM, "mode": "online"}, "mode"),
        ([1, 2], "body"),
    ]
    for body, field in cases:
        r = server.post("/api/v1/tasks", json=body)
        assert r.status_code == 422, (body, r.text)
        e = r.json()
        assert e["type"] == "validation_error" and e["request_id"]
        assert e["errors"][0]["field"] == field, (body, e)
        assert field in e["detail"]
    assert count(server) == 0


def test_malformed_json_duplicate_keys_and_empty_body_write_nothing(make_server):
    server = make_server(NUM_INTERNAL_WORKERS=0)
    for data in ("{bad", '{"problem_id": "a", "problem_id": "b"}', "[", "nul"):
        r = server.post("/api/v1/tasks", data=data, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, (data, r.text)
        assert r.json()["type"] == "bad_request"
    r = server.post("/api/v1/tasks", data="")
    assert r.status_code == 422
    assert count(server) == 0


def test_oversized_body_is_413_without_reading_it(make_server):
    server = make_server(MAX_BODY_BYTES=2048, NUM_INTERNAL_WORKERS=0)
    big = {"problem_id": PROBLEM, "metadata": {"x": "a" * 4096}}
    r = server.post("/api/v1/tasks", json=big)
    assert r.status_code == 413
    assert r.json()["type"] == "payload_too_large"
    # Declared length far beyond the limit: answered at once, the body is never sent.
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"POST /api/v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000000000\r\n\r\n")
        head = s.recv(4096).decode()
    assert head.startswith("HTTP/1.1 413"), head
    # Chunked body past the limit, no Content-Length.
    def chunks():
        for _ in range(10):
            yield b"x" * 1024
    r = requests.post(server.api + "/tasks", data=chunks(), timeout=10)
    assert r.status_code == 413
    assert count(server) == 0


def test_nul_in_a_path_is_400_never_another_route(server):
    """A decoded %00 used to cut the path, so /api/v1/tasks/%00 was answered as the task list."""
    tid = server.post("/api/v1/tasks", json={"problem_id": PROBLEM}).json()["id"]
    for path in ("/api/v1/tasks/%00", "/api/v1/tasks/" + tid + "%00", "/api/v1/tasks/%00/logs",
                 "/tasks/%00", "/api/v1/tasks%00", "/%00", "/api/v1/tasks/%00?status=pending",
                 "/api/v1/sessions/%00x"):
        r = server.get(path)
        assert r.status_code == 400, (path, r.status_code, r.text)
        e = r.json()
        assert set(e) == {"detail", "type", "request_id"}, e
        assert e["request_id"] == r.headers["X-Request-ID"] and "NUL" in e["detail"]
    r = server.post("/api/v1/tasks/%00/cancel")
    assert r.status_code == 400
    # A NUL in the query string is not the path's: the route is still the task list.
    assert server.get("/api/v1/tasks?problem_id=%00").status_code == 200
    assert server.get("/api/v1/tasks/" + tid).json()["status"] in ("pending", "running",
                                                                   "completed")


def test_unknown_routes_and_methods(server):
    assert server.get("/api/v1/nothing").status_code == 404
    r = requests.delete(server.api + "/tasks", timeout=5)
    assert r.status_code == 405 and r.json()["type"] == "method_not_allowed"
    assert server.get("/api/v1/tasks/not-a-uuid").status_code == 422
    assert server.get("/api/v1/tasks/" + str(uuid.uuid4())).status_code == 404


def test_idempotency_key_returns_the_existing_task(make_server):
    server = make_server(NUM_INTERNAL_WORKERS=0)
    r1 = server.post("/api/v1/tasks", json={"problem_id": PROBLEM},
                     headers={"Idempotency-Key": "run-42"})
    r2 = server.post("/api/v1/tasks", json={"problem_id": PROBLEM},
                     headers={"Idempotency-Key": "run-42"})
    r3 = server.post("/api/v1/tasks", json={"problem_id": PROBLEM, "idempotency_key": "run-42"})
    assert r1.status_code == 201 and r2.status_code == 200 and r3.status_code == 200
    assert r1.json()["id"] == r2.json()["id"] == r3.json()["id"]
    assert count(server) == 1


def test_list_filters_envelope_and_paging(make_server):
    server = make_server(NUM_INTERNAL_WORKERS=0)
    ids = [server.submit(problem_id=f"p-{i % 2}")["id"] for i in range(7)]
    r = server.get("/api/v1/tasks", params={"limit": 3, "offset": 1})
    body = r.json()
    assert body["total"] == 7 and body["limit"] == 3 and body["offset"] == 1
    assert [t["id"] for t in body["tasks"]] == ids[::-1][1:4], "newest first"
    body = server.get("/api/v1/tasks", params={"problem_id": "p-1"}).json()
    assert body["total"] == 3 and all(t["problem_id"] == "p-1" for t in body["tasks"])
    body = server.get("/api/v1/tasks", params={"status": "running"}).json()
    assert body["total"] == 0 and body["tasks"] == []
    # The original implementation's paging, oldest first.
    body = server.get("/api/v1/tasks", params={"page": 2, "page_size": 3,
                                               "sort": "created_at"}).json()
    assert body["page"] == 2 and body["page_size"] == 3 and body["total"] == 7
    assert [t["id"] for t in body["tasks"]] == ids[3:6]
    for bad in ({"limit": 0}, {"limit": 1001}, {"offset": -1}, {"status": "done"},
                {"page": 0}, {"sort": "name"}, {"limit": "ten"}, {"since": "yesterday"}):
        r = server.get("/api/v1/tasks", params=bad)
        assert r.status_code == 422, bad
        assert r.json()["errors"][0]["field"] == list(bad)[0]
    # unprefixed aliases of the QUICKSTART
    assert server.get("/tasks", params={"limit": 1}).json()["total"] == 7
    assert server.get(f"/tasks/{ids[0]}").json()["id"] == ids[0]
    assert server.get("/workers").status_code == 200


def test_list_since_filter(make_server):
    server = make_server(NUM_INTERNAL_WORKERS=0)
    first = server.submit()
    second = server.submit()
    body = server.get("/api/v1/tasks", params={"since": second["created_at"]}).json()
    assert [t["id"] for t in body["tasks"]] == [second["id"]]
    body = server.get("/api/v1/tasks", params={"until": second["created_at"]}).json()
    assert [t["id"] for t in body["tasks"]] == [first["id"]]


def test_stats_counts_every_state(server):
    t = server.submit(parameters=fast())
    server.wait_status(t["id"], "completed")
    s = server.get("/api/v1/tasks/stats").json()
    for k in ("pending", "running", "completed", "failed", "timeout", "cancelled", "total"):
        assert k in s
    assert s["completed"] == 1 and s["total"] == 1
    assert s["avg_queue_wait_seconds"] >= 0 and s["avg_run_seconds"] > 0


def test_problems_catalog_and_strict_validation(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=0, PROBLEM_VALIDATION="strict")
    body = s.get("/api/v1/problems").json()
    ids = {p["id"] for p in body["problems"]}
    assert body["total"] == len(body["problems"]) >= 80
    assert PROBLEM in ids
    p = next(p for p in body["problems"] if p["id"] == PROBLEM)
    assert p["task_type"] == "detection"
    r = s.post("/api/v1/tasks", json={"problem_id": "misconfig_app_hotel_res-detection-9"})
    assert r.status_code == 422
    assert "closest" in r.json()["detail"] and PROBLEM in r.json()["detail"]
    assert s.post("/api/v1/tasks", json={"problem_id": PROBLEM}).status_code == 201


def test_logs_route_level_filter_and_limit(server):
    t = server.submit(parameters=fast(steps=4))
    server.wait_status(t["id"], "completed")
    body = server.get(f"/api/v1/tasks/{t['id']}/logs").json()
    assert body["task_id"] == t["id"] and body["total"] == len(body["logs"]) >= 8
    for entry in body["logs"]:
        assert set(entry) == {"timestamp", "level", "message", "context", "attempt"}
        assert entry["attempt"] == 1
    msgs = [e["message"] for e in body["logs"]]
    assert any("step 4/4" in m for m in msgs)
    times = [e["timestamp"] for e in body["logs"]]
    assert times == sorted(times)
    few = server.get(f"/api/v1/tasks/{t['id']}/logs", params={"limit": 2}).json()
    assert len(few["logs"]) == 2 and few["total"] == body["total"]
    warn = server.get(f"/api/v1/tasks/{t['id']}/logs", params={"level": "warning"}).json()
    assert all(e["level"] in ("warning", "error", "critical") for e in warn["logs"])
    assert server.get(f"/api/v1/tasks/{t['id']}/logs", params={"level": "loud"}).status_code == 422
    inline = server.get(f"/api/v1/tasks/{t['id']}", params={"include_logs": "true"}).json()
    assert len(inline["logs"]) == body["total"]
    assert "logs" not in server.task(t["id"])


def test_conversation_routes(server):
    t = server.submit(parameters=fast(steps=3), agent_config={"model": "gpt-4"})
    server.wait_status(t["id"], "completed")
    convs = server.get(f"/api/v1/tasks/{t['id']}/conversations").json()
    assert convs["task_id"] == t["id"] and len(convs["conversations"]) == 1
    c = convs["conversations"][0]
    for k in ("id", "task_id", "session_id", "model_name", "model_config", "started_at",
              "ended_at", "total_messages", "total_tokens", "messages"):
        assert k in c
    roles = [m["role"] for m in c["messages"]]
    assert roles[:2] == ["system", "user"], "system prompt and task message come first"
    assert roles[2:] == ["assistant", "tool"] * 3
    assert c["total_messages"] == len(c["messages"]) == 8
    assert c["model_config"] == {"model": "gpt-4"}
    assert c["total_tokens"] > 0 and c["model_name"] == "simulated-gpt"
    assert [m["step"] for m in c["messages"]] == [0, 0, 1, 1, 2, 2, 3, 3]
    for m in c["messages"]:
        assert set(m) == {"timestamp", "role", "content", "step", "metadata"}

    listing = server.get("/api/v1/llm-conversations", params={"task_id": t["id"]}).json()
    assert listing["total"] == 1 and listing["conversations"][0]["id"] == c["id"]
    assert "messages" not in listing["conversations"][0]
    one = server.get(f"/api/v1/llm-conversations/{c['id']}").json()
    assert one["messages"] == c["messages"]
    msgs = server.get(f"/api/v1/llm-conversations/{c['id']}/messages").json()
    assert msgs["conversation_id"] == c["id"] and msgs["messages"] == c["messages"]
    only = server.get(f"/api/v1/llm-conversations/{c['id']}/messages",
                      params={"role": "assistant"}).json()
    assert [m["role"] for m in only["messages"]] == ["assistant"] * 3
    per_task = server.get(f"/api/v1/llm-conversations/task/{t['id']}/conversations").json()
    assert [x["id"] for x in per_task] == [c["id"]]
    stats = server.get("/api/v1/llm-conversations/stats/summary").json()
    assert stats["total_conversations"] == 1
    assert stats["conversations_by_model"] == {"simulated-gpt": 1}
    assert stats["successful_conversations"] == 1
    assert server.get(f"/api/v1/llm-conversations/{uuid.uuid4()}").status_code == 404
    assert server.get("/api/v1/llm-conversations/x/messages").status_code == 422


def test_original_export_script_request_pattern(server):
    """The calls export_task_data.py makes, with the fields it reads, work unchanged."""
    done = [server.submit(parameters=fast())["id"] for _ in range(3)]
    for i in done:
        server.wait_status(i, "completed")
    tasks, page = [], 1
    while True:
        payload = server.get("/api/v1/tasks", params={"page": page, "page_size": 2,
                                                       "sort": "created_at"}).json()
        page_tasks = payload.get("tasks", [])
        tasks += page_tasks
        if len(tasks) >= payload.get("total", len(page_tasks)) or not page_tasks:
            break
        page += 1
    assert [t["id"] for t in tasks] == done
    for t in tasks:
        logs = server.get(f"/api/v1/tasks/{t['id']}/logs", params={"limit": 1000}).json()
        assert logs.get("logs")
        payload = server.get("/api/v1/llm-conversations",
                             params={"task_id": t["id"], "page": 1, "page_size": 50}).json()
        items = payload.get("conversations", [])
        assert len(items) == payload.get("total") == 1
        details = server.get(f"/api/v1/llm-conversations/{items[0]['id']}/messages")
        details.raise_for_status()
        assert details.json()["messages"]
        empty = server.get("/api/v1/llm-conversations",
                           params={"task_id": t["id"], "page": 2, "page_size": 50}).json()
        assert empty["conversations"] == []


def test_worker_views(server):
    body = server.get("/api/v1/workers").json()
    assert body["total"] == 3
    names = sorted(w["id"] for w in body["workers"])
    assert names == ["worker-001-kind", "worker-002-kind", "worker-003-kind"]
    w = server.get("/api/v1/workers/worker-001-kind").json()
    for k in ("id", "backend_type", "status", "last_heartbeat", "capabilities",
              "tasks_completed", "tasks_failed", "registered_at"):
        assert k in w
    assert w["backend_type"] == "default"
    stats = server.get("/api/v1/workers/worker-001-kind/stats").json()
    assert stats["worker_id"] == "worker-001-kind" and "tasks_completed" in stats
    assert server.get("/api/v1/workers/worker-999-kind").status_code == 404
    assert server.get("/api/v1/workers", params={"status": "idle"}).json()["total"] == 3
    assert server.get("/api/v1/workers", params={"status": "sleepy"}).status_code == 422
    assert server.get("/api/v1/workers", params={"backend_type": "gpu"}).json()["total"] == 0
