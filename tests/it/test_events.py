"""Live events (Server-Sent Events): order, per-task streams, Last-Event-ID, slow clients,
and events across two servers sharing PostgreSQL."""
import json
import socket
import threading
import time

import pytest
import requests

from conftest import fast


class Stream:
    """Reads an SSE stream in a thread; events are (id, type, data) tuples."""

    def __init__(self, url, last_event_id=None):
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        self.resp = requests.get(url, headers=headers, stream=True, timeout=30)
        assert self.resp.status_code == 200, self.resp.text
        assert self.resp.headers["Content-Type"] == "text/event-stream"
        self._raw = []             # (id, type, data text): the reader thread only appends
        self._parsed = []
        self.retry = None
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        ev = {}
        try:
            for raw in self.resp.iter_lines(chunk_size=1 << 16, decode_unicode=True):
                if raw == "":
                    if "data" in ev:   # parsed later: the reader must keep up
                        self._raw.append((ev.get("id"), ev.get("event", "message"), ev["data"]))
                    ev = {}
                elif raw.startswith(":"):
                    continue
                else:
                    key, _, value = raw.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if key == "retry":
                        self.retry = int(value)
                    else:
                        ev[key] = value
        except (requests.RequestException, AttributeError, ValueError):
            pass
        self.closed.set()

    @property
    def events(self):
        n = len(self._raw)
        for i, t, d in self._raw[len(self._parsed):n]:
            self._parsed.append((i, t, json.loads(d)))
        return self._parsed

    def wait_for(self, pred, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            for e in list(self.events):
                if pred(e):
                    return e
            time.sleep(0.05)
        raise AssertionError(f"no such event; got {self.events[-10:]}")

    def close(self):
        self.resp.close()


def key(event_id):
    a, b = event_id.split("-")
    return int(a), int(b)


def statuses(events, task_id):
    return [d["status"] for _, t, d in events if t == "task" and d["task_id"] == task_id]


def test_task_states_stream_in_order_with_rising_ids(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=1)
    st = Stream(s.api + "/events")
    try:
        assert st.retry == 2000 or st.retry is None
        t = s.submit(parameters=fast(steps=3))
        st.wait_for(lambda e: e[1] == "task" and e[2]["task_id"] == t["id"]
                    and e[2]["status"] == "completed")
        assert statuses(st.events, t["id"]) == ["pending", "running", "completed"]
        ids = [key(e[0]) for e in st.events]
        # each id is a cursor over two tables: neither half ever goes back
        assert all(a[0] <= b[0] and a[1] <= b[1] and a != b for a, b in zip(ids, ids[1:]))
        logs = [d for _, ty, d in st.events if ty == "log" and d["task_id"] == t["id"]]
        stored = s.get(f"/api/v1/tasks/{t['id']}/logs?limit=1000").json()["logs"]
        assert [l["message"] for l in logs] == [l["message"] for l in stored]
        workers = [d for _, ty, d in st.events if ty == "worker"]
        assert any(w["status"] == "busy" and w["current_task_id"] == t["id"] for w in workers)
    finally:
        st.close()


def test_task_stream_and_reconnect_with_last_event_id(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=1)
    other = s.submit(parameters=fast(steps=2))
    t = s.submit(parameters=fast(steps=6, step_seconds=0.3))
    first = Stream(f"{s.api}/tasks/{t['id']}/events")
    try:
        first.wait_for(lambda e: e[1] == "log")
    finally:
        first.close()
    seen = list(first.events)
    assert seen and all(d["task_id"] == t["id"] for _, _, d in seen)
    s.wait_status(t["id"], "completed")
    again = Stream(f"{s.api}/tasks/{t['id']}/events", last_event_id=seen[-1][0])
    full = Stream(f"{s.api}/tasks/{t['id']}/events", last_event_id="0-0")
    try:
        again.wait_for(lambda e: e[1] == "task" and e[2]["status"] == "completed")
        full.wait_for(lambda e: e[1] == "task" and e[2]["status"] == "completed")
        time.sleep(0.5)
    finally:
        again.close()
        full.close()
    # what the first connection saw (from when it connected) plus what the reconnection
    # got is the history from then on, with nothing twice and nothing of the other task
    joined = [e[2] for e in seen + again.events]
    assert len(joined) < len(full.events)
    assert joined == [e[2] for e in full.events][-len(joined):]
    assert all(d["task_id"] == t["id"] for _, _, d in full.events)
    assert statuses(full.events, t["id"]) == ["pending", "running", "completed"]
    assert other["id"] not in json.dumps(full.events)


def test_bad_stream_requests_are_refused(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=0)
    assert s.get("/api/v1/events?types=tasks").status_code == 422
    r = s.get("/api/v1/events", headers={"Last-Event-ID": "12"})
    assert r.status_code == 422 and "Last-Event-ID" in r.text
    assert s.get("/api/v1/tasks/00000000-0000-0000-0000-000000000000/events").status_code == 404


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_client_that_does_not_read_is_dropped_and_others_are_not_slowed(make_server,
                                                                          tmpdir_path):
    script = f"{tmpdir_path}/chatty.py"
    with open(script, "w") as f:
        f.write("import json, sys\nsys.stdin.readline()\n"
                "line = json.dumps({'type': 'log', 'level': 'info', 'message': 'x' * 200})\n"
                "for _ in range(80000):\n    print(line)\n"
                "print(json.dumps({'type': 'result', 'success': True}), flush=True)\n")
    s = make_server(NUM_INTERNAL_WORKERS=1, EXECUTOR="command",
                    EXECUTOR_COMMAND=f"/usr/bin/python3 {script}", SSE_CLIENT_BUFFER_KB=4096,
                    MAX_OUTPUT_BYTES=100000000)
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", s.port))
    slow.sendall(b"GET /api/v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
    good = Stream(s.api + "/events?types=log,task")
    try:
        time.sleep(0.5)
        t = s.submit(problem_id="chatty", timeout_minutes=5)
        done = good.wait_for(lambda e: e[1] == "task" and e[2]["status"] == "completed",
                             timeout=120)
        stored = s.get(f"/api/v1/tasks/{t['id']}/logs?limit=1").json()["total"]
        assert stored > 70000
        # the task's end comes after its last line, and the reader got every stored line
        logs = [e for e in good.events if e[1] == "log" and e[2]["task_id"] == t["id"]]
        assert len(logs) == stored and good.events.index(done) > good.events.index(logs[-1])
        deadline = time.time() + 20
        while "dropped a client that is not reading" not in s.log():
            assert time.time() < deadline, s.log()[-2000:]
            time.sleep(0.2)
        # the dropped connection ends: reading it drains to EOF
        slow.settimeout(10)
        received = 0
        while True:
            chunk = slow.recv(65536)
            if not chunk:
                break
            received += len(chunk)
        assert received < 80000 * 200
        assert s.get("/health").status_code == 200
    finally:
        slow.close()
        good.close()


@pytest.mark.parametrize("backend", ["postgres"])
def test_events_cross_servers_and_reconnect_to_another(make_server):
    a = make_server(WORKER_NAME_PREFIX="a-", NUM_INTERNAL_WORKERS=1)
    b = make_server(WORKER_NAME_PREFIX="b-", NUM_INTERNAL_WORKERS=0)
    on_b = Stream(b.api + "/events?types=task")
    try:
        time.sleep(0.5)
        t = a.submit(parameters=fast(steps=2))
        on_b.wait_for(lambda e: e[2]["task_id"] == t["id"] and e[2]["status"] == "completed")
        assert statuses(on_b.events, t["id"]) == ["pending", "running", "completed"]
        mark = on_b.events[-1][0]
    finally:
        on_b.close()
    t2 = b.submit(parameters=fast(steps=2))
    a.wait_status(t2["id"], "completed")
    on_a = Stream(a.api + "/events?types=task", last_event_id=mark)
    try:
        on_a.wait_for(lambda e: e[2]["task_id"] == t2["id"] and e[2]["status"] == "completed")
        assert statuses(on_a.events, t2["id"]) == ["pending", "running", "completed"]
        assert statuses(on_a.events, t["id"]) == []
    finally:
        on_a.close()


def test_timeseries_counts_the_last_hour(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=2)
    ids = [s.submit(parameters=fast(steps=1))["id"] for _ in range(3)]
    for i in ids:
        s.wait_status(i, "completed")
    r = s.get("/api/v1/tasks/timeseries?minutes=60&bucket_seconds=3600")
    assert r.status_code == 200
    b = r.json()["buckets"]
    assert sum(x["submitted"] for x in b) == 3 and sum(x["completed"] for x in b) == 3
    assert sum(x["started"] for x in b) == 3 and all(x["queue_wait_ms"] >= 0 for x in b if x["started"])
    assert s.get("/api/v1/tasks/timeseries?minutes=0").status_code == 422
