"""The store's unit tests (tests/test_store.c) on PostgreSQL as well as SQLite: runs
build/asan/test_store with TASKEXEC_TEST_PG_URL set to a fresh database of the
throwaway cluster, so every case runs on both backends."""
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "build", "asan", "test_store")


def test_store_unit_tests_pass_on_both_backends(pg):
    subprocess.run(["make", "-s", "build/asan/test_store"], cwd=ROOT, check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not os.access(BIN, os.X_OK):
        pytest.skip("build/asan/test_store is not built (make unit)")
    env = dict(os.environ, TASKEXEC_TEST_PG_URL=pg.new_db())
    run = subprocess.run([BIN], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    # both groups ran, every case passed
    assert out.count("[  PASSED  ]") == 2, out[-4000:]
    assert "[  FAILED  ]" not in out
