"""The OpenEnv endpoint (CONTRACT.md "OpenEnv endpoint") driven by a stand-in of OpenEnv's
GenericEnvClient (tests/it/openenv_client.py says what it mirrors), on both backends:
reset/step/state/close, every error code the protocol names, a reset that waits for a
worker while pings are answered, a dropped connection closing its session, draws by
seed, and the handshake's refusals."""
import asyncio
import json
import socket
import time

import pytest
import requests
import websockets

from openenv_client import GenericEnvClient

HOTEL = "misconfig_app_hotel_res-detection-1"


def fenced(call):
    return f"```\n{call}\n```"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def base(s):
    return s.url + "/openenv/"        # a trailing slash, as users write it


def test_health_metadata_schema(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=0)
    assert s.get("/openenv/health").json() == {"status": "healthy"}
    meta = s.get("/openenv/metadata").json()
    assert set(meta) == {"name", "description", "readme_content", "version", "author",
                         "documentation_url"}
    schema = s.get("/openenv/schema").json()
    assert schema["action"]["required"] == ["action"]
    assert schema["action"]["additionalProperties"] is False
    assert set(schema["state"]["properties"]) == {"episode_id", "step_count"}
    assert "text" in schema["observation"]["properties"]


def test_an_episode_end_to_end(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=1)

    async def episode():
        async with GenericEnvClient(base(s)) as env:
            r = await env.reset(problem_id=HOTEL, episode_id="ep-1", max_steps=5)
            obs = r.observation
            assert r.reward is None and r.done is False
            assert obs["problem_id"] == HOTEL and obs["session_id"]
            assert "exec_shell" in obs["actions"] and obs["task_description"] in obs["text"]
            assert "reward" not in obs and "done" not in obs
            st = await env.state()
            assert st["episode_id"] == "ep-1" and st["step_count"] == 0
            r = await env.step({"action": fenced('exec_shell("kubectl get pods -n '
                                                 'test-hotel-reservation")')})
            assert r.done is False and r.reward is None and r.observation["step"] == 1
            assert "CrashLoopBackOff" in r.observation["text"]
            # a typed Action's model_dump() adds "metadata": it is accepted
            r = await env.step({"action": fenced('submit("Yes")'), "metadata": {}})
            assert r.done is True and r.reward == 1.0
            assert r.observation["results"]["Detection Accuracy"] == "Correct"
            assert (await env.state())["step_count"] == 2
            return obs["session_id"]

    sid = run(episode())
    # an ordinary session: listed, with its task completed and its messages kept
    t = s.wait_status(sid, ("completed", "failed", "cancelled"), timeout=30)
    assert t["status"] == "completed" and t["mode"] == "interactive"
    assert t["metadata"]["openenv"]["episode_id"] == "ep-1"
    assert s.get(f"/api/v1/sessions/{sid}").json()["status"] == "done"


def test_every_error_code_and_the_connection_stays_usable(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=1)

    async def errors():
        url = f"ws://127.0.0.1:{s.port}/openenv/ws"
        async with websockets.connect(url) as ws:
            async def rt(text):
                await ws.send(text)
                return json.loads(await asyncio.wait_for(ws.recv(), 30))

            r = await rt("{not json")
            assert r["type"] == "error" and r["data"]["code"] == "INVALID_JSON"
            r = await rt(json.dumps({"type": "teleport"}))
            assert r["data"]["code"] == "UNKNOWN_TYPE" and "teleport" in r["data"]["message"]
            r = await rt(json.dumps({"type": "step"}))
            assert r["data"]["code"] == "VALIDATION_ERROR" and r["data"]["errors"]
            r = await rt(json.dumps({"type": "state", "data": {}}))   # state takes no data
            assert r["data"]["code"] == "VALIDATION_ERROR"
            r = await rt(json.dumps({"type": "step", "data": {"action": "x", "extra": 1}}))
            assert r["data"]["code"] == "VALIDATION_ERROR"
            r = await rt(json.dumps({"type": "step", "data": {"action": "x"}}))
            assert r["data"]["code"] == "EXECUTION_ERROR" and "reset" in r["data"]["message"]
            r = await rt(json.dumps({"type": "reset", "data": {"problem_pattern": "nothing_*"}}))
            assert r["data"]["code"] == "VALIDATION_ERROR"
            r = await rt(json.dumps({"type": "reset", "data": {"problem_id": "bad id"}}))
            assert r["data"]["code"] == "VALIDATION_ERROR"
            # still usable: a real episode now
            r = await rt(json.dumps({"type": "reset", "data": {"problem_id": HOTEL}}))
            assert r["type"] == "observation"
            await ws.send(b"binary")                  # refused with 1003
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.code == 1003

    run(errors())
    # the one session opened was closed with the connection; nothing else was created
    tasks = s.get("/api/v1/tasks").json()["tasks"]
    assert len(tasks) == 1 and tasks[0]["problem_id"] == HOTEL
    assert s.wait_status(tasks[0]["id"], "cancelled", timeout=30)["status"] == "cancelled"


def test_a_reset_waits_for_a_worker_and_pings_are_answered_meanwhile(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=0)

    async def waiting():
        env = GenericEnvClient(base(s))
        await env.connect()
        reset = asyncio.ensure_future(env.reset(problem_id=HOTEL))
        await asyncio.sleep(1.0)
        assert not reset.done()                    # queued: no worker yet
        pong = await env._ws.ping(b"keepalive")
        await asyncio.wait_for(pong, 5)            # answered while the reset waits
        r = requests.post(s.url + "/api/v1/workers/internal/scale", json={"num_workers": 1},
                          timeout=10)
        assert r.status_code == 200
        result = await reset
        assert result.observation["problem_id"] == HOTEL
        await env.disconnect()

    run(waiting())


def test_a_dropped_connection_closes_its_session(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=1)

    async def drop():
        env = GenericEnvClient(base(s))
        r = await env.reset(problem_id=HOTEL)
        sid = r.observation["session_id"]
        env._ws.transport.abort()                  # no close frame, no "close" message
        return sid

    sid = run(drop())
    t = s.wait_status(sid, "cancelled", timeout=30)
    assert t["status"] == "cancelled"


def test_a_second_reset_ends_the_first_and_seeds_draw_the_same_problem(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=2)

    async def twice():
        async with GenericEnvClient(base(s)) as env:
            a = (await env.reset(seed=7, problem_pattern="k8s_target_port-*")).observation
            b = (await env.reset(seed=7, problem_pattern="k8s_target_port-*")).observation
            return a, b

    a, b = run(twice())
    assert a["problem_id"] == b["problem_id"] and a["problem_id"].startswith("k8s_target_port-")
    assert a["session_id"] != b["session_id"]
    assert s.wait_status(a["session_id"], "cancelled", timeout=30)["status"] == "cancelled"
    assert s.wait_status(b["session_id"], "cancelled", timeout=30)["status"] == "cancelled"


def test_the_handshake_refuses_what_is_not_websocket_13(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=0)
    assert s.get("/openenv/ws").status_code == 400
    r = s.get("/openenv/ws", headers={"Upgrade": "websocket", "Connection": "Upgrade",
                                       "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                                       "Sec-WebSocket-Version": "8"})
    assert r.status_code == 426
    # a raw handshake: 101, the RFC's accept value, no extension echoed though one is offered
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
        c.sendall(b"GET /openenv/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  b"Sec-WebSocket-Version: 13\r\n"
                  b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += c.recv(4096)
    text = head.decode()
    assert text.startswith("HTTP/1.1 101")
    assert "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in text
    assert "Sec-WebSocket-Extensions" not in text


def test_shutdown_closes_open_connections_going_away(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=1)

    async def hold():
        env = GenericEnvClient(base(s))
        await env.reset(problem_id=HOTEL)
        t0 = time.time()
        s.proc.send_signal(2)                      # SIGINT: a clean stop
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(env._ws.recv(), 30)
        assert closed.value.code == 1001
        return time.time() - t0

    assert run(hold()) < 20
    s.proc.wait(timeout=30)


def test_the_readme_example_runs(make_server, tmpdir_path):
    """The README's OpenEnv example, with the stand-in client importable under the real
    client's module name (the real one cannot be installed here)."""
    import os
    import re
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    readme = open(os.path.join(root, "README.md")).read()
    section = readme.split("### Through OpenEnv", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    s = make_server(NUM_INTERNAL_WORKERS=1)
    code = code.replace("http://127.0.0.1:8000/openenv", base(s))
    assert base(s) in code
    pkg = os.path.join(tmpdir_path, "openenv", "core")
    os.makedirs(pkg)
    open(os.path.join(tmpdir_path, "openenv", "__init__.py"), "w").close()
    open(os.path.join(pkg, "__init__.py"), "w").close()
    with open(os.path.join(pkg, "generic_client.py"), "w") as f:
        f.write("from openenv_client import GenericEnvClient, StepResult  # noqa\n")
    here = os.path.dirname(os.path.abspath(__file__))
    r = subprocess.run(["/usr/bin/python3", "-c", code], capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, PYTHONPATH=f"{tmpdir_path}:{here}"))
    assert r.returncode == 0, r.stderr
    assert "reward 1.0 2 steps" in r.stdout


def test_limits_oversize_messages_and_idle_connections_are_closed(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=0, OPENENV_MAX_MESSAGE_BYTES=2048,
                    OPENENV_IDLE_SECONDS=5, OPENENV_MAX_CONNECTIONS=2)

    async def limits():
        url = f"ws://127.0.0.1:{s.port}/openenv/ws"
        async with websockets.connect(url, ping_interval=None) as big:
            await big.send(json.dumps({"type": "step", "data": {"action": "x" * 4096}}))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(big.recv(), 10)
            assert closed.value.code == 1009
        a = await websockets.connect(url, ping_interval=None)
        b = await websockets.connect(url, ping_interval=None)
        with pytest.raises(websockets.InvalidStatusCode) as full:
            await websockets.connect(url)
        assert full.value.status_code == 503
        # a silent client (no message, no ping) is closed after OPENENV_IDLE_SECONDS
        t0 = time.time()
        with pytest.raises(websockets.ConnectionClosed) as idle:
            await asyncio.wait_for(a.recv(), 15)
        assert idle.value.code == 1000 and 4 <= time.time() - t0 < 12
        await b.close()

    run(limits())


def test_twenty_concurrent_episodes_on_four_workers_all_finish(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=4)

    async def one(i):
        async with GenericEnvClient(base(s), message_timeout_s=120) as env:
            r = await env.reset(seed=i, problem_pattern="*detection*")
            r = await env.step({"action": fenced('submit("Yes")')})
            assert r.done and r.reward == 1.0
            return (await env.state())["session_id"]

    async def all_of_them():
        return await asyncio.gather(*(one(i) for i in range(20)))

    sids = asyncio.run(asyncio.wait_for(all_of_them(), 240))
    assert len(set(sids)) == 20
    for sid in sids:
        assert s.wait_status(sid, ("completed", "failed", "cancelled"))["status"] == "completed"


@pytest.mark.parametrize("backend", ["postgres"])
def test_the_socket_on_one_server_and_the_session_on_another(make_server):
    a = make_server(WORKER_NAME_PREFIX="a-", NUM_INTERNAL_WORKERS=0)
    b = make_server(WORKER_NAME_PREFIX="b-", NUM_INTERNAL_WORKERS=1)

    async def episode():
        async with GenericEnvClient(base(a)) as env:
            r = await env.reset(problem_id=HOTEL)
            r = await env.step({"action": fenced('exec_shell("kubectl get pods -n '
                                                 'test-hotel-reservation")')})
            assert "CrashLoopBackOff" in r.observation["text"]
            r = await env.step({"action": fenced('submit("Yes")')})
            assert r.done and r.reward == 1.0
            return (await env.state())["session_id"]

    sid = run(episode())
    t = a.wait_status(sid, "completed", timeout=30)
    assert t["worker_id"] == "b-worker-001-kind"


def _raw_ws(port):
    """A raw connection after a valid handshake (for frames no library would send)."""
    c = socket.create_connection(("127.0.0.1", port), timeout=20)
    c.sendall(b"GET /openenv/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              b"Sec-WebSocket-Version: 13\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += c.recv(1)
    assert head.startswith(b"HTTP/1.1 101")
    return c


def _masked(payload, opcode=0x1):
    mask = b"\x01\x02\x03\x04"
    n = len(payload)
    head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else
                                     bytes([0x80 | 126]) + n.to_bytes(2, "big"))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_bad_frames_and_a_client_that_never_reads_take_nothing_down(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=0, OPENENV_MAX_MESSAGE_BYTES=1024)
    # an unmasked frame from a client is a protocol error: close 1002
    c = _raw_ws(s.port)
    c.sendall(b"\x81\x02{}")
    frame = c.recv(64)
    assert frame[0] == 0x88 and int.from_bytes(frame[2:4], "big") == 1002
    c.close()
    # a client that sends and never reads: its replies pile up until it is dropped
    c = _raw_ws(s.port)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    state = _masked(b'{"type": "state"}')
    dropped = False
    try:
        for _ in range(200):
            c.sendall(state * 500)
    except (BrokenPipeError, ConnectionResetError, socket.timeout):
        dropped = True
    deadline = time.time() + 20
    while not dropped and "stopped reading" not in s.log() and time.time() < deadline:
        time.sleep(0.2)
    c.close()
    assert "stopped reading" in s.log()
    # the server and other connections are fine
    async def fine():
        async with GenericEnvClient(base(s)) as env:
            assert (await env.state())["step_count"] == 0
    run(fine())
    assert s.get("/openenv/health").status_code == 200
