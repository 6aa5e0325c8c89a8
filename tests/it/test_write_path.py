"""The write path of issue 17: an internal worker records a task's end and claims its next
task in one statement (PostgreSQL) or one transaction (SQLite). Whatever was merged, every
count, event and worker figure must come out as if each step had been written alone.
(Retries through the same statement: test_retries.py.)"""
import time

from conftest import fast
from test_events import Stream


def drain(s, n):
    ids = [s.submit(problem_id=f"w-{i % 7}")["id"] for i in range(n)]
    deadline = time.time() + 60
    while time.time() < deadline:
        if s.get("/api/v1/tasks/stats").json()["completed"] == n:
            break
        time.sleep(0.1)
    return ids


def test_chained_ends_keep_counts_events_and_worker_figures(make_server, backend, request):
    n = 120
    s = make_server(NUM_INTERNAL_WORKERS=4, EXECUTOR="noop")
    ids = drain(s, n)
    stats = s.get("/api/v1/tasks/stats").json()
    assert (stats["completed"], stats["pending"], stats["running"]) == (n, 0, 0), stats
    assert s.get("/api/v1/tasks", params={"status": "completed"}).json()["total"] == n
    # each task went pending -> running -> completed, and the journal says so in order
    # (the stream is left to the server's stop: closing it waits for its next heartbeat)
    st = Stream(f"{s.api}/events?types=task", last_event_id="0-0")
    st.wait_for(lambda e: sum(d["status"] == "completed" for _, _, d in st.events) >= n)
    seen = {}
    for _, _, d in st.events:
        seen.setdefault(d["task_id"], []).append(d["status"])
    assert seen == {i: ["pending", "running", "completed"] for i in ids}
    for i in ids[:3]:
        assert len(s.get(f"/api/v1/tasks/{i}/logs").json()["logs"]) == 2
    workers = s.get("/api/v1/workers").json()["workers"]
    assert sum(w["tasks_completed"] for w in workers) == n
    assert all(w["status"] == "idle" and w["current_task_id"] is None for w in workers), workers
    if backend == "postgres":
        pg = request.getfixturevalue("pg")
        db = s.db_url.split("///")[1].split("?")[0]
        # the counters the triggers keep match the table, state by state
        kept = dict(line.split("|") for line in pg.psql(
            "SELECT status, sum(n) FROM task_counts GROUP BY 1", db).split())
        real = dict(line.split("|") for line in pg.psql(
            "SELECT status, count(*) FROM tasks GROUP BY 1", db).split())
        assert {k: int(v) for k, v in kept.items() if int(v)} == {k: int(v) for k, v in real.items()}
        assert pg.psql("SELECT count(*) FROM task_events WHERE kind = 'task'",
                               db).strip() == str(3 * n)


def test_a_workers_journal_ends_before_it_claims(make_server):
    # The end of a late high-priority task chains the claim of an earlier (lower seq) one:
    # the worker's events must still read completed, then running (not seq order).
    s = make_server(NUM_INTERNAL_WORKERS=1)
    first = s.submit(parameters=fast(steps=4, step_seconds=0.2))["id"]
    s.wait_status(first, "running")
    low = [s.submit(parameters=fast(steps=1))["id"] for _ in range(2)]
    high = s.submit(parameters=fast(steps=1), priority=5)["id"]
    for i in [first, high] + low:
        s.wait_status(i, "completed")
    st = Stream(f"{s.api}/events?types=task", last_event_id="0-0")
    st.wait_for(lambda e: sum(d["status"] == "completed" for _, _, d in st.events) >= 4)
    mine = [(d["status"], d["task_id"]) for _, _, d in st.events
            if d["status"] in ("running", "completed")]
    assert [t for _, t in mine[::2]] == [first, high] + low, mine
    assert [k for k, _ in mine] == ["running", "completed"] * 4, mine
