"""The LLM gateway's added latency: the same chat completion asked of the stand-in upstream
(tests/it/fake_llm.py, vLLM's shapes) directly and through the gateway, alternately, on
kept-alive connections; and for a stream, the time to its first data chunk both ways.
The task whose key the calls carry is held running by tests/it/llm_agent.py.
Usage: llm_gateway.py API UPSTREAM_URL WORKDIR N. Prints
"plain_direct_p50 plain_direct_p99 plain_gw_p50 plain_gw_p99 ttfb_direct_p50 ttfb_gw_p50"
in ms."""
import http.client
import json
import os
import sys
import time
import urllib.parse
import urllib.request


def conn_of(url):
    u = urllib.parse.urlparse(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    c.connect()
    import socket
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return c, u.path.rstrip("/")


def plain(c, path, key, body):
    t0 = time.perf_counter()
    c.request("POST", path + "/chat/completions", body=body,
              headers={"Content-Type": "application/json", "Authorization": "Bearer " + key})
    r = c.getresponse()
    data = r.read()
    dt = time.perf_counter() - t0
    assert r.status == 200, data
    return dt


def first_chunk(c, path, key, body):
    t0 = time.perf_counter()
    c.request("POST", path + "/chat/completions", body=body,
              headers={"Content-Type": "application/json", "Authorization": "Bearer " + key})
    r = c.getresponse()
    assert r.status == 200
    line = r.readline()
    while not line.startswith(b"data: "):
        line = r.readline()
    dt = time.perf_counter() - t0
    r.read()
    return dt


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] * 1000


def main():
    api, upstream, work, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    env_out, hold = os.path.join(work, "agent-env.json"), os.path.join(work, "hold")
    req = urllib.request.Request(api + "/api/v1/tasks", data=json.dumps({
        "problem_id": "gateway-bench", "timeout_minutes": 60,
        "agent_config": {"env_out": env_out, "hold": hold}}).encode(),
        headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req).read()
    while not os.path.exists(env_out) or os.path.getsize(env_out) == 0:
        time.sleep(0.05)
    time.sleep(0.1)
    env = json.load(open(env_out))
    key = env["OPENAI_API_KEY"]
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "a b c d e f"}],
                       "logprobs": True, "return_token_ids": True}).encode()
    sbody = json.dumps({"model": "m", "stream": True,
                        "messages": [{"role": "user", "content": "a b c d e f"}]}).encode()
    direct, dpath = conn_of(upstream)
    gw, gpath = conn_of(env["OPENAI_BASE_URL"])
    pd, pg, sd, sg = [], [], [], []
    for i in range(n + 20):                 # the first 20 warm up both paths
        a = plain(direct, dpath, "none", body)
        b = plain(gw, gpath, key, body)
        c = first_chunk(direct, dpath, "none", sbody)
        d = first_chunk(gw, gpath, key, sbody)
        if i >= 20:
            pd.append(a), pg.append(b), sd.append(c), sg.append(d)
    open(hold, "w").close()
    print(f"{pct(pd, .5):.2f} {pct(pd, .99):.2f} {pct(pg, .5):.2f} {pct(pg, .99):.2f} "
          f"{pct(sd, .5):.2f} {pct(sg, .5):.2f}")


if __name__ == "__main__":
    main()
