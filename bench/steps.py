"""Step round-trip latency of a session on the simulated environment: the time from
sending POST /api/v1/sessions/{id}/step to reading its answer, over a kept-alive
connection. Usage: steps.py OPEN_URL STEP_URL N  (the session is opened on OPEN_URL and
stepped through STEP_URL, which may be another server). Prints "p50_ms p99_ms"."""
import http.client
import json
import sys
import time
import urllib.parse


def conn(url):
    u = urllib.parse.urlparse(url)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=60)


def call(c, method, path, body=None):
    c.request(method, path, body=json.dumps(body) if body is not None else None,
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    return r.status, json.loads(r.read() or b"null")


def main():
    open_url, step_url, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    a, b = conn(open_url), conn(step_url)
    _, s = call(a, "POST", "/api/v1/sessions",
                {"problem_id": "bench-detection-1", "max_steps": n + 30})
    sid = s["id"]
    while call(a, "GET", f"/api/v1/sessions/{sid}")[1]["status"] == "starting":
        time.sleep(0.01)
    times = []
    for i in range(n + 20):
        t0 = time.perf_counter()
        status, ans = call(b, "POST", f"/api/v1/sessions/{sid}/step",
                           {"action": 'get_traces("test-hotel-reservation", 5)'})
        dt = (time.perf_counter() - t0) * 1000
        assert status == 200 and ans["done"] is False, (status, ans)
        if i >= 20:              # the first steps warm the connections and caches
            times.append(dt)
    call(a, "POST", f"/api/v1/sessions/{sid}/close")
    times.sort()
    print(f"{times[len(times) // 2]:.2f} {times[int(len(times) * 0.99) - 1]:.2f}")


main()
