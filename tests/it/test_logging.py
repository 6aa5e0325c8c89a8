"""LOG_FORMAT=json: one JSON object a line, with request and task fields."""
import json

import pytest

from conftest import fast

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])


def test_json_log_lines(make_server):
    s = make_server(LOG_FORMAT="json", NUM_INTERNAL_WORKERS=1)
    t = s.submit(parameters=fast(steps=1))
    s.wait_status(t["id"], "completed")
    rid = s.get(f"/api/v1/tasks/{t['id']}").headers["X-Request-ID"]
    s.stop()
    lines = [json.loads(line) for line in s.log().splitlines() if line.strip()]
    assert all({"ts", "level", "msg"} <= set(x) for x in lines)
    req = [x for x in lines if x.get("request_id") == rid]
    assert len(req) == 1
    assert req[0]["route"] == "/api/v1/tasks/{id}" and req[0]["status"] == 200
    assert req[0]["method"] == "GET" and req[0]["duration_ms"] >= 0
    assert any(x.get("task_id") == t["id"] and "completed" in x["msg"] for x in lines)
    assert any(x.get("route") == "/api/v1/tasks" and x["status"] == 201 for x in lines)
