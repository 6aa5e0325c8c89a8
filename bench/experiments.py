"""Experiments at scale: the time to create a 10,000-task experiment (one request, one
transaction), and the time to compute a scoreboard. Usage: experiments.py API N_CONFIGS
ATTEMPTS [EXPERIMENT_ID]: creates problems ("*": the whole catalog) x N_CONFIGS x ATTEMPTS
tasks and prints "tasks create_ms"; with EXPERIMENT_ID, prints the median of 5
scoreboard reads of it instead ("scoreboard_ms")."""
import json
import statistics
import sys
import time
import urllib.request


def call(url, body=None):
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"},
                                 method="POST" if body is not None else "GET")
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read())


def main():
    api, configs, attempts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if len(sys.argv) > 4:
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            board = call(f"{api}/api/v1/experiments/{sys.argv[4]}/scoreboard")
            times.append((time.perf_counter() - t0) * 1000)
        assert board["rows"]
        print(f"{statistics.median(times):.1f}")
        return
    spec = {"name": "bench", "problems": ["*"], "attempts": attempts,
            "agent_configs": [{"model": f"m{i}"} for i in range(configs)]}
    t0 = time.perf_counter()
    e = call(f"{api}/api/v1/experiments", spec)
    print(f"{e['task_count']} {(time.perf_counter() - t0) * 1000:.1f}")


main()
