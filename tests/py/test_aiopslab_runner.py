"""Unit tests of the aiopslab runner's pieces (share/aiopslab_runner.py), in-process.
The whole runner is tested end to end in tests/it/test_aiopslab.py."""
import asyncio
import importlib.util
import io
import json
import os
import signal
import sys
from enum import Enum

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
RUNNER = os.path.join(HERE, "..", "..", "share", "aiopslab_runner.py")


@pytest.fixture
def runner():
    spec = importlib.util.spec_from_file_location("aiopslab_runner", RUNNER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.PROTO = io.StringIO()
    mod.STOPPER = mod.Stopper()
    yield mod


def lines(mod):
    return [json.loads(x) for x in mod.PROTO.getvalue().splitlines()]


class SubmissionStatus(Enum):      # as aiopslab/utils/status.py defines it
    VALID_SUBMISSION = 1
    INVALID_SUBMISSION = 2


def test_state_name_reports_the_enum_name(runner):
    assert runner.state_name(SubmissionStatus.VALID_SUBMISSION) == "VALID_SUBMISSION"
    assert runner.state_name("Error parsing response: x") == "Error parsing response: x"


@pytest.mark.parametrize("pid, results, reward", [
    ("misconfig_app_hotel_res-detection-1", {"Detection Accuracy": "Correct"}, 1.0),
    ("misconfig_app_hotel_res-detection-1", {"Detection Accuracy": "Incorrect"}, 0.0),
    ("misconfig_app_hotel_res-localization-1", {"success": True}, 1.0),
    ("misconfig_app_hotel_res-analysis-1",
     {"system_level_correct": True, "fault_type_correct": False}, 0.5),
    ("k8s_target_port-misconfig-mitigation-1", {"success": False}, 0.0),
])
def test_reward_by_task_type(runner, pid, results, reward):
    assert runner.reward(pid, results) == reward


def test_trim_keeps_the_system_prompt_and_the_newest_messages(runner):
    count = lambda m: len(m["content"])
    history = [{"role": "system", "content": "s" * 10}] + [
        {"role": "user" if i % 2 else "assistant", "content": str(i) * 10} for i in range(8)]
    sent = runner.trim_history(history, 45, count)
    assert [m["content"][0] for m in sent] == ["s", "5", "6", "7"]
    assert runner.trim_history(history, 10_000, count) == history
    # the newest message goes even when it alone is over the budget
    huge = history + [{"role": "user", "content": "x" * 100}]
    assert [m["content"][0] for m in runner.trim_history(huge, 45, count)] == ["s", "x"]


def test_prints_become_whole_plain_log_lines(runner):
    out = runner.PrintsAsLogs()
    out.write("\x1b[32mAgent:\n\x1b[0m")
    out.write("half a ")
    out.write("line\n\n   \n")
    got = [(x["message"], x["context"]["source"]) for x in lines(runner)]
    assert got == [("Agent:", "aiopslab"), ("half a line", "aiopslab")]


def test_rich_log_records_are_one_line_each(runner, monkeypatch):
    rich_console = pytest.importorskip("rich.console")
    monkeypatch.setattr(rich_console.Console, "__init__", rich_console.Console.__init__)
    monkeypatch.setattr(rich_console.Console, "log", rich_console.Console.log)
    out = runner.PrintsAsLogs()
    monkeypatch.setattr(sys, "stdout", out)
    message = "Waiting for all pods in namespace 'test-hotel-reservation' to be ready..." * 2
    rich_console.Console().log(f"[bold green]{message}")      # how AIOpsLab's KubeCtl logs
    before = [x["message"] for x in lines(runner)]
    assert len(before) > 1, "rich wraps when not on a terminal (the defect being fixed)"
    runner.PROTO.truncate(0)
    runner.PROTO.seek(0)
    runner.plain_rich()
    rich_console.Console().log(f"[bold green]{message}")
    assert [x["message"] for x in lines(runner)] == [message]


def test_sigterm_waits_for_a_critical_part_then_stops(runner):
    runner.STOPPER.install()
    try:
        done = []
        with pytest.raises(runner.Stop):
            with runner.STOPPER.critical():
                os.kill(os.getpid(), signal.SIGTERM)
                done.append("the part finished")
        assert done == ["the part finished"]
        # Stop is no Exception: AIOpsLab's `except Exception` lets it through
        with pytest.raises(runner.Stop):
            try:
                os.kill(os.getpid(), signal.SIGTERM)
            except Exception:
                pytest.fail("swallowed")
        # while cleaning up, a signal changes nothing
        runner.STOPPER.cleaning = True
        os.kill(os.getpid(), signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


class FakeApp:
    def __init__(self, calls):
        self.calls = calls

    def cleanup(self):
        self.calls.append("cleanup")


class FakeProblem:
    def __init__(self, calls):
        self.calls = calls
        self.app = FakeApp(calls)

    def inject_fault(self):
        self.calls.append("inject")

    def recover_fault(self):
        self.calls.append("recover")


class FakeRegistry:
    def __init__(self, calls):
        self.calls = calls

    def get_problem_instance(self, pid):
        return FakeProblem(self.calls)

    def get_problem_deployment(self, pid):
        return "docker"


def test_clean_up_happens_once_whoever_asks_first(runner):
    calls = []
    care = runner.Cleanup(orch=None)
    reg = FakeRegistry(calls)
    care.watch(reg)
    p = reg.get_problem_instance("x")
    p.recover_fault()                     # nothing injected yet: nothing to recover
    p.inject_fault()
    p.recover_fault()                     # AIOpsLab's own exception path
    p.recover_fault()                     # its atexit hook
    care.finish("stopped")                # and ours: only the app is left
    care.finish("again")
    assert calls == ["inject", "recover", "cleanup"]


def test_a_stop_during_deploy_removes_the_app_and_recovers_nothing(runner):
    calls = []
    care = runner.Cleanup(orch=None)
    reg = FakeRegistry(calls)
    care.watch(reg)
    reg.get_problem_instance("x")
    care.finish("stopped")
    assert calls == ["cleanup"]


def test_kind_exec_goes_to_the_workers_own_node(runner, monkeypatch, tmp_path):
    pkg = tmp_path / "aiopslab" / "service"
    pkg.mkdir(parents=True)
    (tmp_path / "aiopslab" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    # the shape of aiopslab/service/shell.py: exec() calls Shell.docker_exec by name
    (pkg / "shell.py").write_text(
        "class Shell:\n"
        "    @staticmethod\n"
        "    def exec(command, timeout=30):\n"
        "        return Shell.docker_exec('kind-control-plane', command, timeout=timeout)\n"
        "    @staticmethod\n"
        "    def docker_exec(container_name, command, timeout=30):\n"
        "        return (container_name, command, timeout)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for m in [m for m in sys.modules if m == "aiopslab" or m.startswith("aiopslab.")]:
        monkeypatch.delitem(sys.modules, m)
    monkeypatch.setenv("AIOPSLAB_CLUSTER", "worker-003-kind")
    runner.route_kind_exec()
    from aiopslab.service.shell import Shell
    assert Shell.exec("kubectl get pods", timeout=5) == \
        ("worker-003-kind-control-plane", "kubectl get pods", 5)
    assert Shell.docker_exec("other", "ls") == ("other", "ls", 30)


def test_model_calls_run_in_threads_that_never_hold_up_a_stop(runner):
    async def go():
        return await runner.in_thread(lambda a, b: a + b, 2, 3)
    assert asyncio.run(go()) == 5

    async def boom():
        return await runner.in_thread(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        asyncio.run(boom())
