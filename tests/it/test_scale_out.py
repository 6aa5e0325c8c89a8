"""PostgreSQL: migrations, several servers and external workers on one database, and the
database going away mid-run."""
import subprocess
import threading
import time

import pytest
import requests

from conftest import BIN, fast

pytestmark = pytest.mark.parametrize("backend", ["postgres"])


def test_migrate_command_and_concurrent_starts(make_server, db_url, pg, tmpdir_path):
    out = subprocess.run([BIN, "migrate", "--database-url", db_url], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "up to date" in out.stdout
    latest = pg.psql("SELECT max(version) FROM schema_migrations",
                     db_url.split("/")[3].split("?")[0]).strip()
    assert int(latest) >= 2
    # three servers starting at once on a fresh database migrate exactly once
    fresh = pg.new_db()
    servers = [make_server(start=False, db_url=fresh, WORKER_NAME_PREFIX=f"s{i}-",
                           NUM_INTERNAL_WORKERS=1) for i in range(3)]
    for s in servers:
        s.start(wait=False)
    for s in servers:
        s.wait_ready()
    dbname = fresh.split("/")[3].split("?")[0]
    assert pg.psql("SELECT count(*) FROM schema_migrations", dbname).strip() == latest, \
        "each migration applied once"
    assert servers[0].get("/api/v1/workers").json()["total"] == 3
    bad = subprocess.run([BIN, "migrate", "--database-url", "postgresql:///nope?host=/nonexistent"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 3


def test_two_servers_and_an_external_worker_run_each_task_once(make_server, make_worker, db_url,
                                                               pg):
    a = make_server(WORKER_NAME_PREFIX="a-", NUM_INTERNAL_WORKERS=2, EXECUTOR="noop")
    b = make_server(WORKER_NAME_PREFIX="b-", NUM_INTERNAL_WORKERS=2, EXECUTOR="noop")
    make_worker(a, "ext-001-kind", EXECUTOR="noop")
    total, per_thread = 2000, 250
    errors = []

    def submit(server):
        sess = requests.Session()
        for _ in range(per_thread):
            r = sess.post(server.api + "/tasks", json={"problem_id": "bench"}, timeout=30)
            if r.status_code != 201:
                errors.append(r.text)

    threads = [threading.Thread(target=submit, args=(s,)) for s in (a, b) * 4]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, "\n".join(line for srv in (a, b) for line in srv.log().splitlines()
                                  if "postgresql" in line)[-4000:]
    deadline = time.time() + 120
    while time.time() < deadline:
        st = b.get("/api/v1/tasks/stats").json()
        if st["completed"] == total:
            break
        time.sleep(0.2)
    assert st["completed"] == total and st["total"] == total, st
    db = db_url.split("/")[3].split("?")[0]
    # every task started exactly once, on exactly one worker
    starts = pg.psql("SELECT count(*), count(DISTINCT task_id) FROM task_logs WHERE message "
                     "LIKE '%started the task%'", db).strip()
    assert starts == f"{total}|{total}"
    workers = a.get("/api/v1/workers").json()["workers"]
    assert sum(w["tasks_completed"] for w in workers) == total
    used = {w["id"] for w in workers if w["tasks_completed"] > 0}
    assert any(u.startswith("a-") for u in used) and any(u.startswith("b-") for u in used)
    # stats and lists agree across servers
    assert a.get("/api/v1/tasks", params={"status": "completed", "limit": 1}).json()["total"] == total


def test_database_restart_mid_run_loses_nothing(make_server, pg):
    s = make_server(NUM_INTERNAL_WORKERS=2)
    ids = [s.submit(parameters={"simulate": {"steps": 8, "step_seconds": 0.25}},
                    max_steps=8)["id"] for _ in range(3)]
    s.wait_status(ids[0], "running")
    pg.stop("fast")
    try:
        time.sleep(0.5)
        r = s.get("/ready")
        assert r.status_code == 503 and r.json()["ready"] is False
        r = s.post("/api/v1/tasks", json={"problem_id": "p"})
        assert r.status_code == 503 and r.json()["type"] == "service_unavailable"
        assert s.get("/health").json()["status"] == "unhealthy"
        time.sleep(1.5)
    finally:
        pg.start()
    deadline = time.time() + 30
    while time.time() < deadline and s.get("/ready").status_code != 200:
        time.sleep(0.1)
    assert s.get("/ready").status_code == 200
    later = s.submit(parameters=fast(steps=2))["id"]
    for i in ids + [later]:
        t = s.wait_status(i, ("completed", "failed", "timeout"), timeout=60)
        assert t["status"] == "completed", t
    # the steps logged while the database was down were kept and stored
    for i in ids:
        logs = s.get(f"/api/v1/tasks/{i}/logs").json()["logs"]
        assert sum(e["message"].startswith("step ") for e in logs) == 8, i
    assert s.get("/api/v1/tasks", params={"status": "running"}).json()["total"] == 0


def test_listen_notify_wakes_workers_of_another_server(make_server):
    # b's workers poll only every 30 s: a task queued through a starts at once anyway
    a = make_server(WORKER_NAME_PREFIX="a-", NUM_INTERNAL_WORKERS=0)
    b = make_server(WORKER_NAME_PREFIX="b-", NUM_INTERNAL_WORKERS=1, POLL_INTERVAL_MS=30000,
                    EXECUTOR="noop")
    time.sleep(0.5)
    t0 = time.time()
    t = a.submit()
    done = a.wait_status(t["id"], "completed", timeout=20)
    assert time.time() - t0 < 5
    assert done["worker_id"] == "b-worker-001-kind"


def test_a_pool_cut_short_by_the_connection_limit_waits_for_its_live_connections(make_server, pg):
    # A database that admits only 3 connections of this role: the listener and two of the
    # pool's 8. Refused connects must turn into a wait for the working ones, never a 503.
    # (PostgreSQL exempts superusers from CONNECTION LIMIT, hence an ordinary owner role.)
    name = pg.new_db().split("/")[3].split("?")[0]
    pg.psql("DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'capped') "
            "THEN CREATE ROLE capped LOGIN; END IF; END $$")
    pg.psql(f"ALTER DATABASE {name} OWNER TO capped")
    pg.psql(f"ALTER DATABASE {name} CONNECTION LIMIT 3")
    url = f"postgresql:///{name}?host={pg.dir}&port={pg.port}&user=capped"
    s = make_server(db_url=url, NUM_INTERNAL_WORKERS=1, EXECUTOR="noop")
    errors = []

    def submit():
        sess = requests.Session()
        for _ in range(40):
            r = sess.post(s.api + "/tasks", json={"problem_id": "bench"}, timeout=30)
            if r.status_code != 201:
                errors.append(r.text)

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors[:3]
    deadline = time.time() + 60
    while time.time() < deadline and s.get("/api/v1/tasks/stats").json()["completed"] < 320:
        time.sleep(0.2)
    assert s.get("/api/v1/tasks/stats").json()["completed"] == 320
    assert "too many connections" in s.log()   # the refusal was met, and said why
    assert int(pg.psql(f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{name}'")) <= 3
