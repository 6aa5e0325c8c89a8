"""make check-openenv: the endpoint against OpenEnv's real client, where it is installed
(`pip install openenv-core` in the Python given as OPENENV_PYTHON; it cannot be installed
in CI, which has no PyPI). Starts build/asan/taskexec on SQLite with the simulated
executor, then runs the same episode as tests/it/test_openenv.py with
GenericEnvClient(...).sync(), the way a trainer does."""
import os
import socket
import subprocess
import sys
import tempfile
import time

from openenv.core.generic_client import GenericEnvClient  # the real client

BIN = os.environ["TASKEXEC_BIN"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    with tempfile.TemporaryDirectory() as d:
        port = free_port()
        env = dict(os.environ, DATABASE_URL=f"sqlite://{d}/t.db", PORT=str(port),
                   WORK_DIR=f"{d}/work", NUM_INTERNAL_WORKERS="1")
        server = subprocess.Popen([BIN, "serve"], env=env, cwd=d)
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    time.sleep(0.1)
            with GenericEnvClient(base_url=f"http://127.0.0.1:{port}/openenv").sync() as c:
                r = c.reset(problem_id="misconfig_app_hotel_res-detection-1")
                assert r.observation["problem_id"] == "misconfig_app_hotel_res-detection-1"
                r = c.step({"action": "```\nexec_shell(\"kubectl get pods\")\n```"})
                assert r.done is False and r.observation["step"] == 1
                r = c.step({"action": "```\nsubmit(\"Yes\")\n```"})
                assert r.done is True and r.reward == 1.0
                assert c.state()["step_count"] == 2
            print("check-openenv: the real GenericEnvClient ran an episode")
        finally:
            server.terminate()
            server.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main())
