"""Limits and faults: slow and oversized requests, misbehaving executors, a read-only
database. After each: no task lost, none stuck, each error explained."""
import os
import socket
import stat
import textwrap
import time

import pytest
import requests

from conftest import fast

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])


def script(tmpdir, name, body):
    path = os.path.join(tmpdir, name)
    with open(path, "w") as f:
        f.write("#!/usr/bin/python3\n" + textwrap.dedent(body))
    os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)
    return path


def test_slow_clients_hold_no_thread_and_are_cut_off(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=0, HTTP_THREADS=2, HTTP_TIMEOUT_SECONDS=2)
    slow = []
    for _ in range(40):        # far more half-requests than HTTP threads
        c = socket.create_connection(("127.0.0.1", s.port), timeout=10)
        c.sendall(b"POST /api/v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"pro")
        slow.append(c)
    t0 = time.time()
    for _ in range(10):
        assert s.get("/health").status_code == 200
    assert time.time() - t0 < 3, "the half-requests do not block others"
    time.sleep(3)
    for c in slow:              # the server closed them after HTTP_TIMEOUT_SECONDS
        c.settimeout(5)
        assert c.recv(100) == b""
        c.close()
    assert s.get("/api/v1/tasks").json()["total"] == 0


def test_oversized_headers_are_refused(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=0, HTTP_MAX_HEADER_BYTES=8192)
    try:
        r = requests.get(s.url + "/health", headers={"X-Big": "a" * 20000}, timeout=10)
        assert 400 <= r.status_code < 500
    except requests.ConnectionError:
        pass                    # closing the connection is a refusal too
    assert s.get("/health").status_code == 200


def test_connection_limit(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=0, HTTP_MAX_CONNECTIONS=5, HTTP_THREADS=1)
    held = [socket.create_connection(("127.0.0.1", s.port)) for _ in range(5)]
    time.sleep(0.3)
    extra = socket.create_connection(("127.0.0.1", s.port), timeout=1)
    extra.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    with pytest.raises(socket.timeout):
        extra.recv(100)        # waits in the listen queue: the server is at its limit
    for c in held:
        c.close()
    extra.settimeout(10)
    assert extra.recv(100).startswith(b"HTTP/1.1 200"), "served once a slot is free"
    extra.close()


@pytest.mark.parametrize("name,body,expect", [
    ("megabytes_without_newline", """
        import sys
        sys.stdin.readline()
        sys.stdout.write("x" * (5 * 1024 * 1024))
        sys.stdout.flush()
        print('\\n{"type":"result","success":true}')
     """, ("completed", None)),
    ("invalid_utf8", """
        import sys, json
        sys.stdin.readline()
        sys.stdout.buffer.write(b"bad \\xff\\xfe\\xc3 bytes\\n")
        sys.stdout.buffer.write(b'{"type":"log","message":"also \\xff bad"}\\n')
        sys.stdout.flush()
        print(json.dumps({"type": "result", "success": True}), flush=True)
     """, ("completed", None)),
    ("closes_stdout_early", """
        import os, sys, time
        sys.stdin.readline()
        print("closing stdout now", flush=True)
        os.close(1)
        time.sleep(0.5)
        sys.exit(0)
     """, ("failed", "without sending a result")),
    ("forks_a_child_that_outlives_it", """
        import os, sys, json
        sys.stdin.readline()
        if os.fork() == 0:
            os.setsid = None
            import time
            time.sleep(60)
            os._exit(0)
        print(json.dumps({"type": "result", "success": True}), flush=True)
     """, ("completed", None)),
    ("ignores_sigterm", """
        import signal, sys, time
        sys.stdin.readline()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("I will not stop", flush=True)
        while True:
            time.sleep(1)
     """, ("timeout", "timed out after 2 s")),
])
def test_misbehaving_executors(make_server, tmpdir_path, name, body, expect):
    path = script(tmpdir_path, name + ".py", body)
    s = make_server(EXECUTOR="command", EXECUTOR_COMMAND=path, NUM_INTERNAL_WORKERS=1,
                    EXEC_GRACE_SECONDS=1, MAX_OUTPUT_BYTES=1000000)
    t0 = time.time()
    t = s.submit(parameters={"timeout": 2})
    done = s.wait_status(t["id"], ("completed", "failed", "timeout"), timeout=30)
    status, reason = expect
    assert done["status"] == status, done
    if reason:
        assert reason in done["error"]
    assert time.time() - t0 < 15, "stopped: the whole process group is gone"
    logs = s.get(f"/api/v1/tasks/{t['id']}/logs", params={"limit": 100000}).json()
    assert logs["total"] < 100
    if name == "invalid_utf8":
        assert any("\ufffd" in e["message"] for e in logs["logs"])
    # the worker is free again: nothing is stuck
    after = s.submit(parameters={"timeout": 2})
    assert s.wait_status(after["id"], ("completed", "failed", "timeout"), timeout=30)
    assert s.get("/api/v1/tasks", params={"status": "running"}).json()["total"] == 0


def as_nobody(server, tmpdir_path):
    """Root writes to read-only files: run the server as nobody, so file modes count."""
    if os.geteuid() == 0:
        server.prefix = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        os.chmod(tmpdir_path, 0o777)


def test_read_only_database_refuses_to_start_and_says_why(make_server, tmpdir_path):
    s = make_server(start=False, NUM_INTERNAL_WORKERS=1)
    as_nobody(s, tmpdir_path)
    s.start()
    t = s.submit(parameters=fast(steps=1))
    s.wait_status(t["id"], "completed")
    s.stop()
    os.chmod(tmpdir_path, 0o555)
    for f in os.listdir(tmpdir_path):
        if f.startswith("taskexec.db"):
            os.chmod(os.path.join(tmpdir_path, f), 0o444)
    try:
        s.start(wait=False)
        code = s.proc.wait(timeout=30)
        assert code != 0
        assert "cannot open the database" in s.log() and "readonly" in s.log().lower()
    finally:
        os.chmod(tmpdir_path, 0o777)
        for f in os.listdir(tmpdir_path):
            if f.startswith("taskexec.db"):
                os.chmod(os.path.join(tmpdir_path, f), 0o666)
    s.start()
    assert s.task(t["id"])["status"] == "completed", "nothing was lost"


def test_full_disk_answers_503_and_recovers(make_server, tmpdir_path):
    data = os.path.join(tmpdir_path, "small")
    os.makedirs(data)
    if os.geteuid() != 0 or os.system(f"mount -t tmpfs -o size=3m tmpfs {data}") != 0:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        s = make_server(db_url=f"sqlite://{data}/taskexec.db", NUM_INTERNAL_WORKERS=0)
        filler = os.path.join(data, "filler")
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"x" * 65536)
                    f.flush()
            except OSError:
                pass
        statuses = [s.post("/api/v1/tasks", json={"problem_id": "p", "metadata": {
            "pad": "y" * 200000}}).status_code for _ in range(5)]
        assert 503 in statuses, statuses
        assert s.get("/health").status_code in (200, 503)
        os.unlink(filler)
        r = s.post("/api/v1/tasks", json={"problem_id": "p"})
        assert r.status_code == 201, r.text
        assert s.get("/api/v1/tasks").json()["total"] == statuses.count(201) + 1
        s.stop()
    finally:
        os.system(f"umount {data}")
