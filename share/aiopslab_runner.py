"""taskexec's aiopslab executor: runs one AIOpsLab problem with an OpenAI-compatible
agent and streams the run as taskexec's executor protocol (JSON lines on stdout).

Input: the task as one JSON line on stdin. Environment: TASK_ID, PROBLEM_ID, MAX_STEPS,
WORKER_ID, KUBE_CONTEXT, KUBECONFIG, AIOPSLAB_CLUSTER (set by the worker), the model's
endpoint and key (OPENAI_BASE_URL, OPENAI_API_KEY, or the names agent_config gives).

agent_config: model, temperature, max_tokens, top_p, base_url, api_key_env, name.

Output: a log line per phase (init, check, deploy, inject, step, eval, cleanup), every
message of the agent's conversation (the system prompt, the task message, each input the
model was given and each reply, with step numbers and token usage), and a result:
  {"type":"result","success":true,"solved":bool,"reward":0|1,"results":{AIOpsLab's dict},
   "session_id":…,"output":final_state,"metrics":{…}}
"success" says the run completed and was evaluated; "solved"/"reward" say whether the
agent was right (detection: "Detection Accuracy" == "Correct"; the other task types:
results["success"]). Replies are never served from a cache.

Interactive sessions (task mode "interactive"): the trainer is the agent. The runner
registers an agent whose get_action hands AIOpsLab's prompt to the server as an
observation and waits on stdin for the trainer's next action, so AIOpsLab's own
start_problem loop, parser, evaluation and clean-up run unchanged:
  -> {"type":"ready","task_description","instructions","actions"}
  <- {"type":"action","step":n,"action":"exec_shell(\"kubectl get pods\")"}
  -> {"type":"observation","step":n,"content":"...","done":false}
and at the end the last observation with done, reward and results, then the result line.
No model key is needed. reward comes from AIOpsLab's results by task type:
  detection     1 if "Detection Accuracy" == "Correct", else 0
  localization  1 if results["success"] (AIOpsLab's top-1 match), else 0
  analysis      the fraction of "system_level_correct" and "fault_type_correct" that hold
  mitigation    1 if results["success"], else 0

`python3 aiopslab_runner.py --list-problems` prints {"problems":[ids]} from the registry.
"""
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path

PROTO = os.fdopen(os.dup(1), "w", buffering=1)   # protocol lines go here only
STEP = {"n": 0}


def emit(obj):
    PROTO.write(json.dumps(obj, default=str) + "\n")
    PROTO.flush()


def log(level, message, **context):
    emit({"type": "log", "level": level, "message": message, "context": context})


def fail(message, exit_code=3, **extra):
    log("error", message, phase=extra.pop("phase", "init"))
    emit({"type": "result", "success": False, "error": message, **extra})
    sys.exit(exit_code)


class PrintsAsLogs:
    """Whatever AIOpsLab prints becomes info log lines, never protocol noise."""

    def __init__(self):
        self.pending = ""

    def write(self, text):
        self.pending += text
        while "\n" in self.pending:
            line, self.pending = self.pending.split("\n", 1)
            if line.strip():
                log("info", line, source="aiopslab", step=STEP["n"])
        return len(text)

    def flush(self):
        pass


def task_type(problem_id):
    for t in ("detection", "localization", "analysis", "mitigation"):
        if t in problem_id:
            return t
    return "detection"


def solved(problem_id, results):
    if task_type(problem_id) == "detection":
        return results.get("Detection Accuracy") == "Correct"
    return bool(results.get("success"))


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


class ChatModel:
    """An OpenAI-compatible /chat/completions client on the standard library."""

    def __init__(self, cfg):
        self.model = cfg.get("model") or os.environ.get("OPENAI_MODEL") or "gpt-4o"
        self.base_url = (cfg.get("base_url") or os.environ.get("OPENAI_BASE_URL")
                         or "https://api.openai.com/v1").rstrip("/")
        key_env = cfg.get("api_key_env") or "OPENAI_API_KEY"
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
        raise RuntimeError(f"the model endpoint {self.base_url} failed: {last}")


class TaskexecAgent:
    """The agent AIOpsLab drives: the GPT client's prompt, a live model, every turn
    streamed as conversation messages."""

    def __init__(self, model, session_id):
        self.model = model
        self.session_id = session_id
        self.history = []

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
        log("info", f"step {step}: asking the model", phase="step", step=step)
        content, usage, model = await asyncio.to_thread(self.model.complete, self.history)
        self.history.append({"role": "assistant", "content": content})
        self.message("assistant", content, step, model=model, usage=usage)
        return content


class SessionClosed(Exception):
    """stdin ended or SIGTERM came: the trainer closed the session."""


class TrainerAgent:
    """The agent AIOpsLab drives when the trainer chooses every action: each prompt
    AIOpsLab gives is the observation of the step before; the next action comes from
    stdin. Every action and observation is also a conversation message of the task."""

    def __init__(self):
        self.step = 0
        self.session_id = None

    def init_context(self, problem_desc, instructions, apis):
        emit({"type": "ready", "task_description": problem_desc, "instructions": instructions,
              "actions": {k: str(v) for k, v in apis.items()}})

    async def get_action(self, input):
        if self.step > 0:
            emit({"type": "observation", "step": self.step, "content": str(input),
                  "done": False})
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            raise SessionClosed()
        msg = json.loads(line)
        self.step = int(msg.get("step") or self.step + 1)
        STEP["n"] = self.step
        log("info", f"step {self.step}: the trainer's action", phase="step", step=self.step)
        return msg.get("action") or ""


def cleanup(orch):
    """The problem's own clean-up, when the loop did not get to run it."""
    problem = getattr(getattr(orch, "session", None), "problem", None)
    for what in ("recover_fault", "app.cleanup"):
        try:
            target = problem
            for part in what.split("."):
                target = getattr(target, part)
            target()
        except Exception as e:        # best effort: the cluster is recreated if unhealthy
            log("warning", f"clean-up step {what} failed: {e}", phase="cleanup")


def run_session(task, pid, max_steps, Orchestrator):
    def on_term(signum, frame):
        raise SessionClosed()
    signal.signal(signal.SIGTERM, on_term)
    orch = Orchestrator(results_dir=Path.cwd() / "results")
    agent = TrainerAgent()
    orch.register_agent(agent, name="taskexec-trainer")
    log("info", "deploying the application and injecting the fault", phase="deploy")
    try:
        desc, instructions, actions = orch.init_problem(pid)
        agent.session_id = str(getattr(orch.session, "session_id", task.get("id")))
        agent.init_context(desc, instructions, actions)
        out = asyncio.run(orch.start_problem(max_steps=max_steps))
    except SessionClosed:
        log("info", "the session was closed: cleaning up", phase="cleanup")
        cleanup(orch)
        PROTO.flush()
        os._exit(0)   # not waiting for the thread still blocked reading stdin
    except Exception as e:
        traceback.print_exc(file=sys.stderr)
        fail(f"the session failed: {e}", phase="step")
    results = out.get("results") or {}
    r = reward(pid, results)
    emit({"type": "observation", "step": agent.step, "content": str(out.get("final_state")),
          "done": True, "reward": r, "results": results})
    log("info", f"evaluated: reward {r}", phase="eval", results=results)
    emit({"type": "result", "success": True, "solved": r >= 1.0, "reward": r,
          "results": results, "session_id": agent.session_id, "task_type": task_type(pid),
          "output": out.get("final_state"),
          "metrics": {"steps_taken": agent.step,
                      "framework_overhead": out.get("framework_overhead")}})


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
    try:
        from aiopslab.orchestrator import Orchestrator
        return Orchestrator
    except ImportError as e:
        fail(f"AIOpsLab cannot be imported ({e}): install it (pip install -e <AIOpsLab "
             f"checkout>) or set AIOPSLAB_DIR to a checkout", exit_code=4)


def list_problems():
    from aiopslab.orchestrator.problems.registry import ProblemRegistry
    print(json.dumps({"problems": list(ProblemRegistry().get_problem_ids())}))


def main():
    if sys.argv[1:] == ["--list-problems"]:
        return list_problems()
    sys.stdout = PrintsAsLogs()
    task = json.loads(sys.stdin.readline())
    params = task.get("parameters") or {}
    cfg = params.get("agent_config") or {}
    pid = task["problem_id"]
    max_steps = int(params.get("max_steps") or os.environ.get("MAX_STEPS") or 30)
    log("info", f"AIOpsLab run of {pid}, at most {max_steps} steps", phase="init",
        worker=os.environ.get("WORKER_ID"), cluster=os.environ.get("AIOPSLAB_CLUSTER"))
    Orchestrator = import_aiopslab()
    if task.get("mode") == "interactive":
        check_cluster()
        return run_session(task, pid, max_steps, Orchestrator)
    model = ChatModel(cfg)
    check_cluster()

    orch = Orchestrator(results_dir=Path.cwd() / "results")
    agent = TaskexecAgent(model, session_id=None)
    orch.register_agent(agent, name=cfg.get("name") or "taskexec-agent")
    log("info", "deploying the application and injecting the fault", phase="deploy")
    t0 = time.time()
    try:
        desc, instructions, actions = orch.init_problem(pid)
    except Exception as e:
        traceback.print_exc(file=sys.stderr)
        fail(f"init_problem({pid}) failed: {e}", phase="deploy")
    agent.session_id = str(getattr(orch.session, "session_id", task.get("id")))
    log("info", f"problem ready in {time.time() - t0:.1f} s", phase="inject",
        session_id=agent.session_id)
    agent.init_context(desc, instructions, actions)
    try:
        out = asyncio.run(orch.start_problem(max_steps=max_steps))
    except Exception as e:
        traceback.print_exc(file=sys.stderr)
        fail(f"the run failed: {e}", phase="step", session_id=agent.session_id)
    results = out.get("results") or {}
    ok = solved(pid, results)
    log("info", f"evaluated: {'solved' if ok else 'not solved'}", phase="eval", results=results)
    log("info", "the environment was cleaned up", phase="cleanup")
    emit({"type": "result", "success": True, "solved": ok, "reward": 1.0 if ok else 0.0,
          "results": results, "session_id": agent.session_id,
          "output": out.get("final_state"), "task_type": task_type(pid),
          "metrics": {"steps_taken": results.get("steps", STEP["n"]),
                      "in_tokens": results.get("in_tokens"),
                      "out_tokens": results.get("out_tokens"),
                      "framework_overhead": out.get("framework_overhead")}})


if __name__ == "__main__":
    main()
