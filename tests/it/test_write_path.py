"""The write path of issue 17: an internal worker records a task's end and claims its next
task in one statement (PostgreSQL) or one transaction (SQLite). Whatever was merged, every
count, event and worker figure must come out as if each step had been written alone.
(Retries through the same statement: test_retries.py.)"""
import concurrent.futures
import signal
import time

import pytest
import requests
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


def pg_db(s, request):
    return request.getfixturevalue("pg"), s.db_url.split("///")[1].split("?")[0]


def slow_inserts(pg, db, seconds):
    """Each INSERT statement into tasks takes `seconds` longer, so creates arriving meanwhile
    wait for the next one: how a busy database looks to the server, made certain."""
    pg.psql("CREATE FUNCTION te_test_slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"PERFORM pg_sleep({seconds}); RETURN NULL; END $$; CREATE TRIGGER te_test_slow "
            "AFTER INSERT ON tasks FOR EACH STATEMENT EXECUTE FUNCTION te_test_slow()", db)


def post_all(s, bodies, keys=None):
    keys = keys or [None] * len(bodies)
    with concurrent.futures.ThreadPoolExecutor(32) as ex:
        return list(ex.map(lambda bk: s.post(
            "/api/v1/tasks", json=bk[0],
            headers={"Idempotency-Key": bk[1]} if bk[1] else {}), zip(bodies, keys)))


def test_concurrent_creates_each_get_their_own_task(make_server, backend, request):
    # On PostgreSQL creates that wait at the same time are written in one statement
    # (store/pg/tasks.c) from parked requests (api_task_create): each request must still
    # get its own task, a key sent by many at once must name one task, and the counters
    # and the journal must list each task once. SQLite writes one at a time: same answers.
    s = make_server(NUM_INTERNAL_WORKERS=0)
    if backend == "postgres":
        pg, db = pg_db(s, request)
        slow_inserts(pg, db, 0.05)
    n = 64
    rs = post_all(s, [{"problem_id": f"p-{i}", "priority": i % 3, "parameters": {"i": i},
                       "metadata": {"who": f"m-{i}"}} for i in range(n)])
    assert [r.status_code for r in rs] == [201] * n, [r.text for r in rs if r.status_code != 201]
    ids = [r.json()["id"] for r in rs]
    assert len(set(ids)) == n
    for i, r in enumerate(rs):
        t = s.task(r.json()["id"])
        assert (t["problem_id"], t["priority"], t["parameters"]["i"], t["metadata"]) == \
            (f"p-{i}", i % 3, i, {"who": f"m-{i}"})
    keyed = post_all(s, [{"problem_id": "same"}] * 16, keys=["k-1"] * 12 + ["k-2"] * 4)
    assert sorted(r.status_code for r in keyed) == [200] * 14 + [201] * 2
    assert len({r.json()["id"] for r in keyed[:12]}) == 1
    assert len({r.json()["id"] for r in keyed[12:]}) == 1
    assert s.get("/api/v1/tasks/stats").json()["pending"] == n + 2
    st = Stream(f"{s.api}/events?types=task", last_event_id="0-0")
    st.wait_for(lambda e: len(st.events) >= n + 2)
    seen = [d["task_id"] for _, _, d in st.events]
    assert sorted(seen) == sorted(ids + [keyed[0].json()["id"], keyed[12].json()["id"]])
    if backend == "postgres":
        # they were written together: fewer transactions than tasks
        groups = int(pg.psql("SELECT count(DISTINCT xmin::text) FROM tasks", db))
        assert groups < n // 2, groups
        assert pg.psql("SELECT sum(n) FROM task_counts WHERE status = 'pending'", db).strip() == \
            str(n + 2)


@pytest.mark.parametrize("backend", ["postgres"])
def test_a_row_the_database_refuses_fails_only_its_own_create(make_server, request, pg):
    # A statement of many rows fails as a whole; the rows are then written one by one, so
    # only the refused one's request fails (503, as any statement the database refuses).
    s = make_server(NUM_INTERNAL_WORKERS=0)
    _, db = pg_db(s, request)
    slow_inserts(pg, db, 0.05)
    pg.psql("ALTER TABLE tasks ADD CONSTRAINT te_test_refused CHECK (problem_id <> 'refused')", db)
    bodies = [{"problem_id": "refused" if i % 8 == 3 else f"ok-{i}"} for i in range(48)]
    rs = post_all(s, bodies)
    for b, r in zip(bodies, rs):
        assert r.status_code == (503 if b["problem_id"] == "refused" else 201), r.text
    ok = {r.json()["id"] for r in rs if r.status_code == 201}
    assert len(ok) == 42
    assert set(pg.psql("SELECT id FROM tasks", db).split()) == ok
    # (How many statements wrote them depends on how the requests met: with a refused
    # row every eighth, a group larger than eight is written row by row. That creates
    # are grouped at all is the test above's.)


@pytest.mark.parametrize("backend", ["postgres"])
def test_parked_creates_are_answered_at_shutdown(make_server, request, pg):
    # Creates parked behind a slow insert when SIGTERM comes are written and answered
    # before the server stops; each task answered 201 is stored.
    s = make_server(NUM_INTERNAL_WORKERS=0)
    _, db = pg_db(s, request)
    slow_inserts(pg, db, 0.3)
    with concurrent.futures.ThreadPoolExecutor(16) as ex:
        futs = [ex.submit(s.post, "/api/v1/tasks", json={"problem_id": f"d-{i}"})
                for i in range(16)]
        time.sleep(0.2)
        s.proc.send_signal(signal.SIGTERM)
        answered = []
        for f in futs:
            try:
                r = f.result()
            except requests.RequestException:
                continue  # sent after the listening socket closed
            assert r.status_code == 201, r.text
            answered.append(r.json()["id"])
    assert s.proc.wait(timeout=30) == 0
    assert answered
    stored = set(pg.psql("SELECT id FROM tasks", db).split())
    assert set(answered) <= stored


@pytest.mark.parametrize("backend", ["postgres"])
def test_counts_and_journal_of_a_statement_mixing_states(make_server, request, pg):
    # One statement moving tasks by several transitions (the update trigger's mixed-states
    # path, which an internal worker's end-and-claim takes): the counters still match the
    # table and each change is journalled once, a claim after the ends.
    s = make_server(NUM_INTERNAL_WORKERS=0)
    _, db = pg_db(s, request)
    for i in range(6):
        s.submit(problem_id=f"m-{i}")
    pg.psql("INSERT INTO workers (id, backend_type, status, last_heartbeat, registered_at) "
            "VALUES ('w', 'default', 'idle', now(), now())", db)
    pg.psql("UPDATE tasks SET status = 'running', worker_id = 'w', started_at = now() "
            "WHERE seq % 2 = 0", db)
    pg.psql("UPDATE tasks SET status = CASE WHEN status = 'running' THEN 'completed' "
            "WHEN seq = 3 THEN 'running' ELSE 'cancelled' END, worker_id = 'w', "
            "started_at = now(), updated_at = now()", db)
    kept = dict(line.split("|") for line in pg.psql(
        "SELECT status, sum(n) FROM task_counts GROUP BY 1 HAVING sum(n) <> 0", db).split())
    real = dict(line.split("|") for line in pg.psql(
        "SELECT status, count(*) FROM tasks GROUP BY 1", db).split())
    assert kept == real == {"completed": "3", "running": "1", "cancelled": "2"}
    stats = s.get("/api/v1/tasks/stats").json()
    assert (stats["completed"], stats["running"], stats["cancelled"], stats["pending"]) == \
        (3, 1, 2, 0)
    last = pg.psql("SELECT status FROM task_events WHERE kind = 'task' ORDER BY id DESC "
                   "LIMIT 6", db).split()
    assert last[0] == "running" and sorted(last[1:]) == ["cancelled"] * 2 + ["completed"] * 3
    assert pg.psql("SELECT count(*) FROM task_events WHERE kind = 'task'", db).strip() == "15"
