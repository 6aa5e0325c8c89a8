"""Step round-trip latency through the OpenEnv WebSocket (/openenv/ws) on the simulated
environment: from sending a step message to reading its observation. A minimal
blocking RFC 6455 client (masked text frames, no extensions), so the figure compares
with steps.py's http.client on equal terms. Usage: ws_steps.py URL N. Prints
"p50_ms p99_ms"."""
import base64
import json
import os
import socket
import struct
import sys
import time
import urllib.parse


def send_text(s, text):
    data = text.encode()
    mask = os.urandom(4)
    n = len(data)
    head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else
                            bytes([0x80 | 126]) + struct.pack("!H", n))
    s.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))


def read_exact(s, n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed")
        out += chunk
    return out


def recv_text(s):
    b0, b1 = read_exact(s, 2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", read_exact(s, 2))[0]
    elif n == 127:
        n = struct.unpack("!Q", read_exact(s, 8))[0]
    payload = read_exact(s, n)
    assert b0 & 0x0F == 1, b0
    return json.loads(payload)


def main():
    u = urllib.parse.urlparse(sys.argv[1])
    n = int(sys.argv[2])
    s = socket.create_connection((u.hostname, u.port), timeout=60)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /openenv/ws HTTP/1.1\r\nHost: {u.netloc}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    send_text(s, json.dumps({"type": "reset", "data": {"problem_id": "bench-detection-1",
                                                         "max_steps": n + 30}}))
    assert recv_text(s)["type"] == "observation"
    times = []
    step = json.dumps({"type": "step", "data": {"action": 'get_traces("test-hotel-reservation", 5)'}})
    for i in range(n + 20):
        t0 = time.perf_counter()
        send_text(s, step)
        r = recv_text(s)
        dt = (time.perf_counter() - t0) * 1000
        assert r["type"] == "observation" and r["data"]["done"] is False, r
        if i >= 20:
            times.append(dt)
    send_text(s, json.dumps({"type": "close"}))
    s.close()
    times.sort()
    print(f"{times[len(times) // 2]:.2f} {times[int(len(times) * 0.99) - 1]:.2f}")


main()
