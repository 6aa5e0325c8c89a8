"""Webhooks: one accepted delivery per task, retried with back-off, signed, across restarts."""
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import fast, free_port

SECRET = "s3cret"


class Receiver:
    """Fails the first `fail_first` deliveries of each task with 500, then accepts."""

    def __init__(self, fail_first=2, port=0):
        self.deliveries = []       # (task id, status answered, headers, body)
        self.fail_first = fail_first
        outer = self
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                task = json.loads(body)
                with lock:
                    seen = sum(d[0] == task["id"] for d in outer.deliveries)
                    code = 500 if seen < outer.fail_first else 200
                    outer.deliveries.append((task["id"], code, dict(self.headers), body))
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def accepted(self):
        return [d for d in self.deliveries if d[1] == 200]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def wait_for(cond, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


def test_one_accepted_signed_delivery_per_task(make_server, receiver):
    s = make_server(NUM_INTERNAL_WORKERS=2, WEBHOOK_SECRET=SECRET, WEBHOOK_RETRY_BASE_MS=100)
    done = [s.submit(callback_url=receiver.url, parameters=fast(steps=1))["id"] for _ in range(4)]
    failed = s.submit(callback_url=receiver.url, parameters=fast(steps=1, outcome="failure"))["id"]
    pending = s.submit(callback_url=receiver.url, parameters=fast(steps=1, outcome="hang"))["id"]
    s.wait_status(pending, "running")
    s.post(f"/api/v1/tasks/{pending}/cancel")
    plain = s.submit(parameters=fast(steps=1))["id"]        # no callback_url: no delivery
    ids = done + [failed, pending]
    assert wait_for(lambda: len(receiver.accepted()) == len(ids)), receiver.deliveries
    time.sleep(1)
    accepted = receiver.accepted()
    assert sorted(d[0] for d in accepted) == sorted(ids), "exactly one accepted delivery each"
    assert all(sum(d[0] == i for d in receiver.deliveries) == 3 for i in ids), \
        "two refused attempts, then the accepted one"
    assert plain not in {d[0] for d in receiver.deliveries}
    for task_id, _, headers, body in accepted:
        want = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert headers["X-Taskexec-Signature"] == f"sha256={want}"
        final = json.loads(body)
        assert final == s.task(task_id), "the final task JSON"
        assert final["status"] in ("completed", "failed", "cancelled")
    statuses = {json.loads(d[3])["status"] for d in accepted}
    assert statuses == {"completed", "failed", "cancelled"}


def test_deliveries_survive_a_restart(make_server, tmpdir_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    s = make_server(NUM_INTERNAL_WORKERS=2, WEBHOOK_RETRY_BASE_MS=100)
    ids = [s.submit(callback_url=url, parameters=fast(steps=1))["id"] for _ in range(3)]
    for i in ids:
        s.wait_status(i, "completed")
    time.sleep(0.5)          # attempts fail: nobody listens yet
    s.stop()
    r = Receiver(fail_first=0, port=port)
    try:
        s.start()
        assert wait_for(lambda: len(r.accepted()) == 3, timeout=60), r.deliveries
        time.sleep(1)
        assert sorted(d[0] for d in r.accepted()) == sorted(ids)
    finally:
        r.close()


def test_allowed_hosts_and_giving_up(make_server, receiver):
    s = make_server(NUM_INTERNAL_WORKERS=1, WEBHOOK_ALLOWED_HOSTS="127.0.0.1, hooks.example",
                    WEBHOOK_MAX_ATTEMPTS=2, WEBHOOK_RETRY_BASE_MS=50)
    r = s.post("/api/v1/tasks", json={"problem_id": "p", "callback_url": "http://10.0.0.1/x"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "callback_url"
    # allowed; it never runs (no worker of its backend), so nothing is sent off this machine
    assert s.post("/api/v1/tasks", json={"problem_id": "p", "backend_type": "nowhere",
                                         "callback_url": "https://hooks.example:8443/x"}
                  ).status_code == 201
    receiver.fail_first = 100
    t = s.submit(callback_url=receiver.url, parameters=fast(steps=1))
    assert wait_for(lambda: sum(d[0] == t["id"] for d in receiver.deliveries) == 2)
    time.sleep(1)
    assert sum(d[0] == t["id"] for d in receiver.deliveries) == 2, "given up after the maximum"


def test_libraries_are_opened_at_their_first_use(make_server, receiver, backend):
    """libpq is mapped only by a server on PostgreSQL, libcurl only once a webhook goes
    out, and OpenSSL's libcrypto not for the server's own hashing (on PostgreSQL libpq
    brings it): src/core/dynlib.c, a server that needs neither does not carry them."""
    receiver.fail_first = 0
    s = make_server(NUM_INTERNAL_WORKERS=1, WEBHOOK_SECRET=SECRET)

    def maps():
        with open(f"/proc/{s.proc.pid}/maps") as f:
            return f.read()

    t = s.submit(parameters=fast(steps=1))["id"]
    s.wait_status(t, "completed")
    m = maps()
    assert ("/libpq.so" in m) == (backend == "postgres")
    assert "/libcurl" not in m
    if backend == "sqlite":
        assert "/libcrypto.so" not in m
    t = s.submit(callback_url=receiver.url, parameters=fast(steps=1))["id"]
    assert wait_for(lambda: any(d[0] == t for d in receiver.accepted()))
    assert "/libcurl" in maps()
