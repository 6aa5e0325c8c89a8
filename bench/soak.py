#!/usr/bin/python3
"""make soak: an hour (SOAK_SECONDS) of mixed submit / claim / cancel / read load against a
release server on 127.0.0.1, printing the server's memory and open files every 30 s.
They should stay flat. Prints figures; never fails on a number.

Usage: bench/soak.py [seconds] [sample-every-seconds]
"""
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "build", "taskexec")
SECONDS = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get("SOAK_SECONDS", 3600))
EVERY = int(sys.argv[2]) if len(sys.argv) > 2 else 30


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sample(pid):
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) // 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def main():
    work = tempfile.mkdtemp(prefix="taskexec-soak-")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api/v1"
    env = dict(os.environ, PORT=str(port), DATABASE_URL=f"sqlite://{work}/soak.db",
               WORK_DIR=f"{work}/work", LOG_LEVEL="warning", NUM_INTERNAL_WORKERS="4")
    log = open(f"{work}/server.log", "wb")
    server = subprocess.Popen([BIN, "serve"], cwd=work, env=env, stdout=log, stderr=log)
    stop = threading.Event()
    counts = {"submitted": 0, "cancelled": 0, "reads": 0, "errors": 0}
    ids = []
    lock = threading.Lock()
    try:
        for _ in range(100):
            try:
                if requests.get(f"http://127.0.0.1:{port}/ready", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.1)

        def submitter():
            s = requests.Session()
            while not stop.is_set():
                outcome = random.choice(["success"] * 6 + ["failure", "crash", "hang"])
                body = {"problem_id": f"soak-{random.randint(1, 50)}", "parameters": {
                    "timeout": 5, "simulate": {"steps": random.randint(1, 4),
                                               "step_seconds": 0.02, "outcome": outcome}}}
                try:
                    r = s.post(f"{api}/tasks", json=body, timeout=10)
                    with lock:
                        counts["submitted"] += 1
                        ids.append(r.json()["id"])
                        del ids[:-500]
                except (requests.RequestException, ValueError, KeyError):
                    counts["errors"] += 1
                time.sleep(0.05)

        def canceller():
            s = requests.Session()
            while not stop.is_set():
                with lock:
                    victim = random.choice(ids) if ids else None
                if victim:
                    try:
                        if s.post(f"{api}/tasks/{victim}/cancel", timeout=10).status_code == 200:
                            counts["cancelled"] += 1
                    except requests.RequestException:
                        counts["errors"] += 1
                time.sleep(0.3)

        def reader():
            s = requests.Session()
            while not stop.is_set():
                try:
                    with lock:
                        one = random.choice(ids) if ids else None
                    s.get(f"{api}/tasks", params={"limit": 50}, timeout=10)
                    if one:
                        s.get(f"{api}/tasks/{one}/logs", timeout=10)
                        s.get(f"{api}/tasks/{one}/conversations", timeout=10)
                    s.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
                    counts["reads"] += 4
                except requests.RequestException:
                    counts["errors"] += 1
                time.sleep(0.1)

        threads = [threading.Thread(target=f, daemon=True)
                   for f in (submitter, submitter, canceller, reader)]
        for t in threads:
            t.start()
        print(f"soak: {SECONDS} s against pid {server.pid} (SQLite, 4 workers, simulated)")
        print(f"{'elapsed_s':>9} {'rss_mb':>7} {'fds':>5} {'submitted':>10} {'cancelled':>10} "
              f"{'reads':>8} {'errors':>7}")
        samples, t0 = [], time.time()
        while time.time() - t0 < SECONDS:
            time.sleep(min(EVERY, max(0, SECONDS - (time.time() - t0))))
            rss, fds = sample(server.pid)
            samples.append((rss, fds))
            print(f"{time.time() - t0:9.0f} {rss:7d} {fds:5d} {counts['submitted']:10d} "
                  f"{counts['cancelled']:10d} {counts['reads']:8d} {counts['errors']:7d}",
                  flush=True)
        stop.set()
        for t in threads:
            t.join(timeout=15)
        if samples:
            half = samples[len(samples) // 2:]
            print(f"rss first {samples[0][0]} MB, last {samples[-1][0]} MB, max of the second "
                  f"half {max(r for r, _ in half)} MB; fds first {samples[0][1]}, last "
                  f"{samples[-1][1]}")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        log.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
