"""The unit tests that take a database (tests/test_store.c, tests/test_session.c) on
PostgreSQL as well as SQLite: each runs with TASKEXEC_TEST_PG_URL set to a fresh database
of the throwaway cluster (tests/testdb.h), so every case runs on both backends."""
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("name", ["test_store", "test_session"])
def test_unit_tests_pass_on_both_backends(pg, name):
    binary = os.path.join(ROOT, "build", "asan", name)
    build = subprocess.run(["make", "-s", f"build/asan/{name}"], cwd=ROOT, capture_output=True,
                           text=True)
    assert build.returncode == 0 and os.access(binary, os.X_OK), build.stderr[-4000:]
    env = dict(os.environ, TASKEXEC_TEST_PG_URL=pg.new_db())
    run = subprocess.run([binary], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    # both groups ran, every case passed
    assert out.count("[  PASSED  ]") == 2, out[-4000:]
    assert "[  FAILED  ]" not in out
