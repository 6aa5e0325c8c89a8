"""The dashboard end to end in headless Chromium (tests/e2e/dashboard.cjs, playwright-core):
submit from the form and watch the task finish live, read its conversation, cancel a
running task, rerun, scale workers. Screenshots of each page go to build/screenshots/."""
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHOTS = os.path.join(ROOT, "build", "screenshots")


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_dashboard_end_to_end(make_server, backend):
    s = make_server(NUM_INTERNAL_WORKERS=1)
    out = os.path.join(SHOTS, backend)
    os.makedirs(out, exist_ok=True)
    r = subprocess.run(["node", os.path.join(ROOT, "tests", "e2e", "dashboard.cjs"), s.url, out],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr + "\n--- server log ---\n" + s.log()[-3000:]
    for page in ("overview", "tasks", "task", "workers"):
        assert os.path.getsize(os.path.join(out, page + ".png")) > 1000


def test_dashboard_is_served_by_the_binary(make_server):
    s = make_server(NUM_INTERNAL_WORKERS=0)
    r = s.get("/")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    # no external script, style or font: it works without any network beyond the server
    # (the browser test also fails on any request leaving the server)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", r.text)
    assert "@import" not in r.text and "url(http" not in r.text
