"""taskexec's aiopslab executor: runs one AIOpsLab problem with an OpenAI-compatible
agent and streams the run as taskexec's executor protocol (JSON lines on stdout).

Input: the task as one JSON line on stdin. Environment: TASK_ID, PROBLEM_ID, MAX_STEPS,
WORKER_ID, KUBE_CONTEXT, KUBECONFIG, AIOPSLAB_CLUSTER (set by the worker), the model's
endpoint and key (OPENAI_BASE_URL, OPENAI_API_KEY, or the names agent_config gives;
with TASKEXEC_LLM_GATEWAY=1 the first two are taskexec's LLM gateway and the task's key,
and the gateway applies agent_config's base_url and api_key_env itself).

agent_config: model, temperature, max_tokens, top_p, seed, base_url, api_key_env, name,
request_timeout, max_context_tokens.

Output: a log line per phase (init, check, deploy, inject, step, eval, cleanup), every
message of the agent's conversation (the system prompt, the task message, each input the
model was given and each reply, with step numbers and token usage), and a result:
  {"type":"result","success":true,"solved":bool,"reward":0|1,"results":{AIOpsLab's dict},
   "session_id":…,"output":"VALID_SUBMISSION","metrics":{…}}
"success" says the run completed and was evaluated; "solved"/"reward" say whether the
agent was right. A failure says "error" and "error_class": "infrastructure" (set-up, the
cluster, the model endpoint) or "agent" (the agent ran and failed, e.g. an invalid
submission). Replies are never served from a cache.

Interactive sessions (task mode "interactive"): the trainer is the agent. The runner
registers an agent whose get_action hands AIOpsLab's prompt to the server as an
observation and waits on stdin for the trainer's next action, so AIOpsLab's own
start_problem loop, parser, evaluation and clean-up run unchanged. Actions reach
AIOpsLab exactly as the trainer sent them: its parser takes one fenced block.
  -> {"type":"ready","task_description","instructions","actions"}
  <- {"type":"action","step":n,"action":"```\\nexec_shell(\\"kubectl get pods\\")\\n```"}
  -> {"type":"observation","step":n,"content":"...","done":false}
and at the end the last observation with done, reward and results, then the result line.
No model key is needed. reward comes from AIOpsLab's results by task type:
  detection     1 if "Detection Accuracy" == "Correct", else 0
  localization  1 if results["success"] (AIOpsLab's exact match), else 0
  analysis      the fraction of "system_level_correct" and "fault_type_correct" that hold
  mitigation    1 if results["success"], else 0

Clean-up. However a run ends — done, failure, SIGTERM (cancel, close, timeout, the
server's shutdown) or end of input (a closed session) — the injected fault is recovered
and the application removed exactly once: AIOpsLab recovers the fault itself at a normal
end, in its own exception paths and from atexit, but not on a signal, so the runner turns
SIGTERM into an exception AIOpsLab's handlers do not catch, guards recover_fault and the
application's cleanup so that whichever path comes first does the work, and finishes
whatever is left.

Also, without editing AIOpsLab's files: with `k8s_host: kind` AIOpsLab's Shell runs
`docker exec kind-control-plane`; the runner sends that to this worker's own
`<AIOPSLAB_CLUSTER>-control-plane`. rich's console output (split at 80 columns when not
a terminal) and colour codes are turned into whole, plain log lines.

`python3 aiopslab_runner.py --list-problems` prints {"problems":[{"id","application",
"namespace"}]} from AIOpsLab's registry, read without instantiating any problem (that
would create namespaces).
"""
import asyncio
import importlib.util
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from enum import Enum
from pathlib import Path

PROTO = os.fdopen(os.dup(1), "w", buffering=1)   # protocol lines go here only
STEP = {"n": 0}
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
# AIOpsLab's GPT client trims the history to this many tokens (clients/gpt.py).
CONTEXT_TOKENS = 120000
PROTO_LOCK = threading.Lock()


def emit(obj):
    with PROTO_LOCK:
        PROTO.write(json.dumps(obj, default=str) + "\n")
        PROTO.flush()


def log(level, message, **context):
    emit({"type": "log", "level": level, "message": message, "context": context})


def fail(message, error_class="infrastructure", phase="init", exit_code=3, **extra):
    log("error", message, phase=phase)
    emit({"type": "result", "success": False, "error": message, "error_class": error_class,
          **extra})
    sys.exit(exit_code)


class Stop(BaseException):
    """SIGTERM or the end of input. A BaseException, so that AIOpsLab's `except
    Exception` handlers let it through to our clean-up instead of swallowing it."""


class Stopper:
    """SIGTERM handling: raises Stop where the main thread is, except inside a critical
    part (injecting or recovering a fault), where it waits for the part's end."""

    def __init__(self):
        self.why = None
        self.depth = 0
        self.cleaning = False

    def install(self):
        signal.signal(signal.SIGTERM, self.on_signal)

    def on_signal(self, signum, frame):
        self.request("stopped by the worker (SIGTERM: cancel, close, timeout or shutdown)")

    def request(self, why):
        if self.why is None:
            self.why = why
        if self.depth == 0 and not self.cleaning:
            raise Stop(self.why)

    def critical(self):
        stopper = self

        class Part:
            def __enter__(self):
                stopper.depth += 1

            def __exit__(self, *exc):
                stopper.depth -= 1
                if stopper.depth == 0 and stopper.why and not stopper.cleaning and \
                        exc[0] is None:
                    raise Stop(stopper.why)
                return False
        return Part()


STOPPER = Stopper()


class PrintsAsLogs:
    """Whatever AIOpsLab prints becomes info log lines, plain (no colour codes) and
    whole, never protocol noise."""

    encoding = "utf-8"

    def __init__(self):
        self.pending = ""

    def write(self, text):
        self.pending += text
        while "\n" in self.pending:
            line, self.pending = self.pending.split("\n", 1)
            line = ANSI.sub("", line).rstrip()
            if line.strip():
                log("info", line, source="aiopslab", step=STEP["n"])
        return len(text)

    def flush(self):
        pass

    def isatty(self):
        return False


def plain_rich():
    """rich, when not writing to a terminal, wraps at 80 columns and pads log records
    with time and source columns: make its consoles print each record as one line."""
    try:
        import rich.console
    except ImportError:
        return
    Console = rich.console.Console
    init = Console.__init__

    def plain_init(self, *args, **kwargs):
        kwargs.setdefault("soft_wrap", True)
        kwargs.setdefault("color_system", None)
        init(self, *args, **kwargs)

    def plain_log(self, *objects, sep=" ", end="\n", **kwargs):
        self.print(*objects, sep=sep, end=end, soft_wrap=True)

    Console.__init__ = plain_init
    Console.log = plain_log


def task_type(problem_id):
    for t in ("detection", "localization", "analysis", "mitigation"):
        if t in problem_id:
            return t
    return "detection"


def reward(problem_id, results):
    kind = task_type(problem_id)
    if kind == "detection":
        return 1.0 if results.get("Detection Accuracy") == "Correct" else 0.0
    if kind == "analysis":
        parts = [results[k] for k in ("system_level_correct", "fault_type_correct")
                 if k in results]
        if parts:
            return sum(1.0 for p in parts if p) / len(parts)
    return 1.0 if results.get("success") else 0.0


def state_name(state):
    """AIOpsLab's final_state is a SubmissionStatus on a submission: report its name."""
    return state.name if isinstance(state, Enum) else str(state)


def in_thread(fn, *args):
    """Runs fn in a daemon thread, as a future of the running loop: a stop never waits
    for it (asyncio.to_thread's pool is joined at the loop's shutdown)."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def settle(ok, value):
        if not fut.done():
            (fut.set_result if ok else fut.set_exception)(value)

    def work():
        try:
            value, ok = fn(*args), True
        except BaseException as e:      # handed to the awaiting coroutine
            value, ok = e, False
        loop.call_soon_threadsafe(settle, ok, value)

    threading.Thread(target=work, daemon=True).start()
    return fut


class ModelError(Exception):
    """The model endpoint could not be used: an infrastructure failure."""


class ChatModel:
    """An OpenAI-compatible /chat/completions client on the standard library."""

    def __init__(self, cfg):
        self.model = cfg.get("model") or os.environ.get("OPENAI_MODEL") or "gpt-4o"
        # Through taskexec's LLM gateway when it gave us one: the gateway forwards to the
        # upstream agent_config names, with the key only the server holds, and records
        # every call.
        via_gateway = os.environ.get("TASKEXEC_LLM_GATEWAY") == "1"
        self.base_url = ((None if via_gateway else cfg.get("base_url"))
                         or os.environ.get("OPENAI_BASE_URL")
                         or "https://api.openai.com/v1").rstrip("/")
        key_env = ("OPENAI_API_KEY" if via_gateway else cfg.get("api_key_env")) or "OPENAI_API_KEY"
        self.key = os.environ.get(key_env)
        if not self.key:
            fail(f"no API key: set {key_env} in the worker's environment (or name another "
                 f"variable in agent_config.api_key_env)")
        self.params = {k: cfg[k] for k in ("temperature", "max_tokens", "top_p", "seed")
                       if k in cfg}
        self.timeout = float(cfg.get("request_timeout", 120))

    def complete(self, messages):
        body = json.dumps({"model": self.model, "messages": messages, **self.params}).encode()
        req = urllib.request.Request(self.base_url + "/chat/completions", data=body, headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {self.key}"})
        last = None
        for attempt in range(4):
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    reply = json.load(resp)
                return (reply["choices"][0]["message"].get("content") or "",
                        reply.get("usage") or {}, reply.get("model") or self.model)
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}: {e.read()[:300]!r}"
                if e.code < 500 and e.code != 429:
                    break
            except (urllib.error.URLError, OSError, KeyError, ValueError) as e:
                last = str(e)
            time.sleep(2 ** attempt)
        raise ModelError(f"the model endpoint {self.base_url} failed: {last}")


def count_tokens():
    """Tokens of a message the way AIOpsLab's GPT client counts them (tiktoken, plus 4
    a message); about 4 characters a token when tiktoken is not installed."""
    try:
        import tiktoken
        enc = tiktoken.get_encoding("cl100k_base")
        return lambda m: 4 + len(enc.encode(m.get("content") or "", disallowed_special=()))
    except Exception:
        return lambda m: 4 + len(m.get("content") or "") // 4 + 1


def trim_history(history, budget, count):
    """The newest messages that fit in budget tokens, the last one always (AIOpsLab's
    clients/gpt.py does the same), and the system prompt kept first: it holds the API
    docs the agent needs every turn."""
    system = history[0] if history and history[0]["role"] == "system" else None
    rest = history[1:] if system else history
    used = count(system) if system else 0
    kept = []
    for m in reversed(rest):
        if kept and used + count(m) > budget:
            break
        kept.insert(0, m)
        used += count(m)
    return ([system] if system else []) + kept


class TaskexecAgent:
    """The agent AIOpsLab drives: the GPT client's prompt, a live model, every turn
    streamed as conversation messages."""

    def __init__(self, model, budget):
        self.model = model
        self.session_id = None
        self.history = []
        self.budget = budget
        self.count = count_tokens()

    def message(self, role, content, step, **meta):
        emit({"type": "message", "session_id": self.session_id, "step": step, "role": role,
              "content": content, **meta})

    def init_context(self, problem_desc, instructions, apis):
        shell = {k: v for k, v in apis.items() if "exec_shell" in k}
        submit = {k: v for k, v in apis.items() if "submit" in k}
        show = lambda d: "\n\n".join(f"{k}\n{v}" for k, v in d.items())
        system = (f"{problem_desc}\nYou are provided with a direct API to a secure terminal to "
                  f"the service where you can run commands:\n\n{show(shell)}\n\nFinally, you will "
                  f"submit your solution for this task using the following API:\n\n{show(submit)}"
                  f"\n\nIMPORTANT:\n1. The submit() call must strictly follow its defined parameter "
                  f"signature for this task.\n2. Provide the call in a markdown code block.\n\nAt "
                  f"each turn respond with:\nAction: <your action>\n")
        self.history = [{"role": "system", "content": system},
                        {"role": "user", "content": instructions}]
        self.message("system", system, 0)
        self.message("user", instructions, 0)

    async def get_action(self, input):
        STEP["n"] += 1
        step = STEP["n"]
        self.history.append({"role": "user", "content": input})
        self.message("user", input, step)
        sent = trim_history(self.history, self.budget, self.count)
        if len(sent) < len(self.history):
            log("warning", f"step {step}: the history is over {self.budget} tokens; sending "
                f"the system prompt and the newest {len(sent) - 1} of {len(self.history) - 1} "
                f"other messages", phase="step", step=step)
        log("info", f"step {step}: asking the model", phase="step", step=step)
        content, usage, model = await in_thread(self.model.complete, sent)
        self.history.append({"role": "assistant", "content": content})
        self.message("assistant", content, step, model=model, usage=usage)
        return content


class TrainerAgent:
    """The agent AIOpsLab drives when the trainer chooses every action: each prompt
    AIOpsLab gives is the observation of the step before; the next action comes from
    stdin, as the trainer wrote it."""

    def __init__(self):
        self.step = 0
        self.session_id = None
        self.inbox = None

    def init_context(self, problem_desc, instructions, apis):
        emit({"type": "ready", "task_description": problem_desc, "instructions": instructions,
              "actions": {k: str(v) for k, v in apis.items()}})

    def listen(self):
        """stdin lines into the loop's queue, from a daemon thread (one blocked in
        readline must never hold up the process's exit); None at the end of input."""
        loop = asyncio.get_running_loop()
        self.inbox = asyncio.Queue()

        def read():
            for line in iter(sys.stdin.readline, ""):
                loop.call_soon_threadsafe(self.inbox.put_nowait, line)
            loop.call_soon_threadsafe(self.inbox.put_nowait, None)
        threading.Thread(target=read, daemon=True).start()

    async def get_action(self, input):
        if self.step > 0:
            emit({"type": "observation", "step": self.step, "content": str(input),
                  "done": False})
        line = await self.inbox.get()
        if line is None:
            STOPPER.request("the session was closed (end of input)")
        msg = json.loads(line)
        self.step = int(msg.get("step") or self.step + 1)
        STEP["n"] = self.step
        log("info", f"step {self.step}: the trainer's action", phase="step", step=self.step)
        return msg.get("action") or ""


class Cleanup:
    """The problem's clean-up, done once whoever asks first: AIOpsLab's start_problem
    (normal end or its exception path), its atexit hook, or this runner."""

    def __init__(self, orch):
        self.orch = orch
        self.problem = None
        self.injected = self.recovered = self.app_removed = False
        self.infra = False        # OpenEBS and Prometheus may be installed
        self.infra_removed = False

    def watch(self, registry):
        """Wraps the registry's get_problem_instance so the problem it makes is guarded."""
        make = registry.get_problem_instance

        def get_problem_instance(problem_id):
            problem = make(problem_id)
            self.guard(problem)
            self.infra = registry.get_problem_deployment(problem_id) != "docker"
            return problem
        registry.get_problem_instance = get_problem_instance

    def guard(self, problem):
        self.problem = problem
        inject, recover = problem.inject_fault, problem.recover_fault
        app_cleanup = problem.app.cleanup

        def inject_fault(*args, **kwargs):
            self.injected = True       # before: a half-done injection is recovered too
            with STOPPER.critical():
                return inject(*args, **kwargs)

        def recover_fault(*args, **kwargs):
            if self.recovered or not self.injected:
                return None
            self.recovered = True
            with STOPPER.critical():
                return recover(*args, **kwargs)

        def cleanup_app(*args, **kwargs):
            if self.app_removed:
                return None
            self.app_removed = True
            return app_cleanup(*args, **kwargs)

        problem.inject_fault = inject_fault
        problem.recover_fault = recover_fault
        problem.app.cleanup = cleanup_app

    def finish(self, why):
        """Whatever is left: recover the fault, remove the application and what
        init_problem installed. Never raises; each step is logged."""
        STOPPER.cleaning = True
        if self.problem is None:
            return
        todo = [("recover the fault", self.problem.recover_fault, not self.recovered and
                 self.injected),
                ("remove the application", self.problem.app.cleanup, not self.app_removed),
                ("remove OpenEBS and Prometheus", self.remove_infra,
                 self.infra and not self.infra_removed)]
        todo = [t for t in todo if t[2]]
        if not todo:
            return
        log("info", f"cleaning up ({why}): " + ", ".join(t[0] for t in todo), phase="cleanup")
        for what, step, _ in todo:
            try:
                step()
            except BaseException as e:  # best effort: the worker checks the cluster next
                log("warning", f"clean-up step '{what}' failed: {e}", phase="cleanup")
        log("info", "clean-up done", phase="cleanup")

    def remove_infra(self):
        # What AIOpsLab's start_problem does after a normal end (orchestrator.py).
        self.infra_removed = True
        prometheus = getattr(self.orch, "prometheus", None)
        if prometheus is not None:
            prometheus.teardown()
        kubectl = self.orch.kubectl
        kubectl.exec_command("kubectl delete sc openebs-hostpath openebs-device "
                             "--ignore-not-found")
        kubectl.exec_command("kubectl delete -f "
                             "https://openebs.github.io/charts/openebs-operator.yaml")
        kubectl.wait_for_namespace_deletion("openebs")

    def normal_end_seen(self):
        """start_problem returned: it recovered the fault, removed the app and the infra."""
        self.recovered = self.recovered or self.injected
        self.app_removed = True
        self.infra_removed = True


def route_kind_exec():
    """AIOpsLab's Shell runs `docker exec kind-control-plane` for `k8s_host: kind`,
    whatever the cluster: send it to this worker's own cluster's node."""
    cluster = os.environ.get("AIOPSLAB_CLUSTER")
    if not cluster:
        return
    try:
        from aiopslab.service.shell import Shell
    except Exception:
        return
    original = Shell.docker_exec

    def docker_exec(container_name, command, timeout=30):
        if container_name == "kind-control-plane":
            container_name = f"{cluster}-control-plane"
        return original(container_name, command, timeout=timeout)
    Shell.docker_exec = staticmethod(docker_exec)


def check_cluster():
    ctx = os.environ.get("KUBE_CONTEXT")
    if not ctx or os.environ.get("TASKEXEC_SKIP_CLUSTER_CHECK") == "1":
        return
    try:
        out = subprocess.run(["kubectl", "--context", ctx, "get", "nodes"], capture_output=True,
                             text=True, timeout=60)
    except FileNotFoundError:
        fail("kubectl is not installed on the worker (install kubectl, and kind for Kind "
             "clusters)", phase="check")
    except subprocess.TimeoutExpired:
        fail(f"the cluster {ctx} did not answer within 60 s", phase="check")
    if out.returncode != 0:
        fail(f"the cluster {ctx} is unreachable: {(out.stderr or out.stdout).strip()[:400]} "
             f"(start it, or set BACKEND_PROVISION=kind)", phase="check")
    log("info", f"cluster {ctx} is reachable", phase="check")


def import_aiopslab():
    """Imports AIOpsLab, turning each way that fails into one line saying what to do."""
    spec = importlib.util.find_spec("aiopslab")
    if spec is None or not spec.submodule_search_locations:
        fail(f"AIOpsLab is not importable by {sys.executable}: set AIOPSLAB_DIR to an AIOpsLab "
             f"checkout, or AIOPSLAB_PYTHON to a Python it is installed in (pip install -e "
             f"<checkout>)", exit_code=4)
    pkg = Path(list(spec.submodule_search_locations)[0])
    if not (pkg / "config.yml").exists():
        fail(f"{pkg / 'config.yml'} is missing (AIOpsLab ships only config.yml.example, and "
             f"reads config.yml when imported): copy the example and set k8s_host: kind",
             exit_code=4)
    kube = Path("~/.kube/config").expanduser()
    if not kube.exists():
        fail(f"{kube} is missing: AIOpsLab loads it when imported (aiopslab/observer), "
             f"whatever KUBECONFIG says; create it, e.g. with `kind export kubeconfig --name "
             f"{os.environ.get('AIOPSLAB_CLUSTER') or 'kind'}`", exit_code=4)
    try:
        from aiopslab.orchestrator import Orchestrator
        return Orchestrator
    except ModuleNotFoundError as e:
        traceback.print_exc(file=sys.stderr)
        top = (e.name or "").split(".")[0]
        if top == "aiopslab":
            fail(f"AIOpsLab at {pkg} is incomplete: {e}", exit_code=4)
        fail(f"AIOpsLab's dependency '{top}' is missing from {sys.executable}: install "
             f"AIOpsLab's dependencies into it (poetry install, or pip install -e "
             f"{pkg.parent})", exit_code=4)
    except Exception as e:
        traceback.print_exc(file=sys.stderr)
        fail(f"importing AIOpsLab from {pkg} failed: {type(e).__name__}: {e}", exit_code=4)


def application_of(entry):
    """The application class and namespace a registry entry deploys, read from the
    code (a problem's base __init__ does `self.app = HotelReservation()`; an
    application's __init__ passes its metadata file), never by instantiating it."""
    from aiopslab.service.apps.base import Application
    hint = None
    cls = entry
    if not inspect.isclass(entry):
        code, names = entry.__code__, entry.__globals__
        cls = next(names[n] for n in code.co_names if inspect.isclass(names.get(n)))
        hint = next((c for c in code.co_consts if isinstance(c, str)), None)
    apps = []
    for k in cls.__mro__:
        init = k.__dict__.get("__init__")
        for n in getattr(getattr(init, "__code__", None), "co_names", ()):
            a = init.__globals__.get(n)
            if inspect.isclass(a) and issubclass(a, Application) and a is not Application \
                    and a not in apps:
                apps.append(a)
    if len(apps) > 1 and hint:   # chosen by an argument, e.g. NoOpDetection(app_name="hotel")
        key = hint.replace("_", "").lower()
        apps = [a for a in apps if a.__name__.lower().startswith(key)]
    if len(apps) != 1:
        return None, None
    app = apps[0]
    init = app.__dict__["__init__"]
    for n in init.__code__.co_names:
        path = init.__globals__.get(n)
        if n.endswith("_METADATA") and path:
            with open(path) as f:
                return app.__name__, json.load(f).get("Namespace")
    return app.__name__, None


def list_problems():
    from aiopslab.orchestrator.problems.registry import ProblemRegistry
    registry = ProblemRegistry()
    docker = set(getattr(registry, "DOCKER_REGISTRY", ()))
    problems = []
    for pid, entry in registry.PROBLEM_REGISTRY.items():
        try:
            app, namespace = application_of(entry)
        except Exception:
            app, namespace = None, None
        problems.append({"id": pid, "application": app,
                         "namespace": None if pid in docker else namespace})
    print(json.dumps({"problems": problems}))


def run_loop(coro):
    """Runs coro on a loop of our own. On Stop nothing is awaited: model calls and the
    stdin reader are daemon threads."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop.run_until_complete(coro)


def classify(e):
    if isinstance(e, ModelError):
        return "infrastructure"
    if isinstance(e, ValueError) and "Invalid submission" in str(e):
        return "agent"
    return "infrastructure"


def main():
    if sys.argv[1:] == ["--list-problems"]:
        return list_problems()
    STOPPER.install()
    sys.stdout = PrintsAsLogs()
    plain_rich()
    task = json.loads(sys.stdin.readline())
    params = task.get("parameters") or {}
    cfg = params.get("agent_config") or {}
    pid = task["problem_id"]
    interactive = task.get("mode") == "interactive"
    max_steps = int(params.get("max_steps") or os.environ.get("MAX_STEPS") or 30)
    log("info", f"AIOpsLab run of {pid}, at most {max_steps} steps", phase="init",
        worker=os.environ.get("WORKER_ID"), cluster=os.environ.get("AIOPSLAB_CLUSTER"))
    Orchestrator = import_aiopslab()
    route_kind_exec()
    if interactive:
        agent = TrainerAgent()
    else:
        agent = TaskexecAgent(ChatModel(cfg),
                              int(cfg.get("max_context_tokens") or CONTEXT_TOKENS))
    check_cluster()

    orch = Orchestrator(results_dir=Path.cwd() / "results")
    care = Cleanup(orch)
    care.watch(orch.probs)
    orch.register_agent(agent, name=cfg.get("name") or
                        ("taskexec-trainer" if interactive else "taskexec-agent"))
    phase = {"now": "deploy"}

    async def run():
        if interactive:
            agent.listen()
        log("info", "deploying the application and injecting the fault", phase="deploy")
        t0 = time.time()
        desc, instructions, actions = orch.init_problem(pid)
        agent.session_id = str(getattr(orch.session, "session_id", task.get("id")))
        log("info", f"problem ready in {time.time() - t0:.1f} s", phase="inject",
            session_id=agent.session_id)
        agent.init_context(desc, instructions, actions)
        phase["now"] = "step"
        return await orch.start_problem(max_steps=max_steps)

    try:
        out = run_loop(run())
        care.normal_end_seen()
    except Stop as e:
        log("info", f"{e}: cleaning up", phase="cleanup")
        care.finish(str(e))
        PROTO.flush()
        os._exit(0)            # nothing to wait for: the reader and model threads die here
    except Exception as e:
        traceback.print_exc(file=sys.stderr)
        care.finish("the run failed")
        where = "init_problem" if phase["now"] == "deploy" else "the run"
        if interactive and phase["now"] == "step":   # the step in flight gets its answer
            emit({"type": "observation", "step": agent.step, "content": str(e), "done": True,
                  "reward": 0.0, "results": {}})
        fail(f"{where} of {pid} failed: {type(e).__name__}: {e}", error_class=classify(e),
             phase=phase["now"], session_id=agent.session_id)
    STOPPER.cleaning = True    # from here on a SIGTERM waits for the result line
    care.finish("after the run")
    results = out.get("results") or {}
    final = state_name(out.get("final_state"))
    r = reward(pid, results)
    steps = agent.step if interactive else results.get("steps", STEP["n"])
    if interactive:
        emit({"type": "observation", "step": agent.step, "content": final, "done": True,
              "reward": r, "results": results})
    log("info", f"evaluated: reward {r}", phase="eval", results=results)
    emit({"type": "result", "success": True, "solved": r >= 1.0, "reward": r,
          "results": results, "session_id": agent.session_id, "task_type": task_type(pid),
          "output": final,
          "metrics": {"steps_taken": steps,
                      "in_tokens": results.get("in_tokens"),
                      "out_tokens": results.get("out_tokens"),
                      "framework_overhead": out.get("framework_overhead")}})


if __name__ == "__main__":
    main()
