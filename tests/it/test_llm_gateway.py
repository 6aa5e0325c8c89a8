"""The LLM gateway (CONTRACT.md "LLM gateway"): an agent that speaks the OpenAI API is
recorded call by call, token for token, through POST /llm/v1/chat/completions, against a
stand-in of vLLM's server (fake_llm.py says which real behaviour each part mirrors)."""
import json
import os
import socket
import sys
import time

import pytest
import requests

sys.path.insert(0, os.path.dirname(__file__))
import fake_llm  # noqa: E402

AGENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "llm_agent.py")
SECRET = "sk-upstream-secret-0123456789"


@pytest.fixture
def upstream():
    srv, fake = fake_llm.start()
    fake.url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    yield fake
    srv.shutdown()
    srv.server_close()


def gateway_server(make_server, upstream_url, **extra):
    settings = dict(EXECUTOR="command", EXECUTOR_COMMAND=AGENT, NUM_INTERNAL_WORKERS=2,
                    LLM_UPSTREAM_URL=upstream_url, LLM_UPSTREAM_KEY_ENV="UPSTREAM_SECRET",
                    UPSTREAM_SECRET=SECRET)
    settings.update(extra)
    return make_server(**settings)


def calls_of(s, task_id, n, tokens=False, timeout=10):
    """The task's recorded calls, once n are there (records are written just after the
    answer)."""
    deadline = time.time() + timeout
    while True:
        r = s.get(f"/api/v1/tasks/{task_id}/llm-calls" + ("?tokens=true" if tokens else ""))
        assert r.status_code == 200, r.text
        calls = r.json()["calls"]
        if len(calls) >= n or time.time() > deadline:
            assert len(calls) == n, calls
            return calls
        time.sleep(0.05)


def held_task(s, tmp, **agent_config):
    """A running task whose agent waits for a file: its key and gateway URL, for calls
    made by the test itself. Returns (task, env, release)."""
    env_out, hold = os.path.join(tmp, "env.json"), os.path.join(tmp, "hold")
    t = s.submit(problem_id="p", agent_config=dict(agent_config, env_out=env_out, hold=hold))
    deadline = time.time() + 20
    while not os.path.exists(env_out) or os.path.getsize(env_out) == 0:
        assert time.time() < deadline, s.log()
        time.sleep(0.05)
    time.sleep(0.05)
    env = json.load(open(env_out))
    return t, env, lambda: open(hold, "w").close()


def post(env, body, key=None, **kw):
    return requests.post(env["OPENAI_BASE_URL"] + "/chat/completions", json=body,
                         headers={"Authorization": f"Bearer {key or env['OPENAI_API_KEY']}"},
                         timeout=30, **kw)


def test_an_agent_is_recorded_token_for_token_and_never_sees_the_key(make_server, upstream,
                                                                      tmpdir_path):
    s = gateway_server(make_server, upstream.url)
    plain = {"model": "m", "messages": [{"role": "user", "content": "hello there world"}],
             "temperature": 0.3, "logprobs": True, "top_logprobs": 2, "return_token_ids": True}
    stream = {"model": "m", "stream": True, "stream_options": {"include_usage": True},
              "messages": [{"role": "user", "content": "a b c"}], "logprobs": True,
              "return_tokens_as_token_ids": True}
    env_out = os.path.join(tmpdir_path, "agent-env.json")
    t = s.submit(problem_id="p", agent_config={"calls": [plain, stream], "env_out": env_out,
                                               "list_models": True})
    done = s.wait_status(t["id"], ("completed", "failed"))
    assert done["status"] == "completed", (done, s.log())
    got = done["result"]["output"]["calls"]
    assert got[0] == {"status": 200, "text": "echo: hello there world"}
    assert got[1]["text"] == "echo: a b c" and got[1]["done"] and got[1]["error"] is None
    assert got[2]["models"]["data"][0]["id"] == fake_llm.MODEL

    # The executor has the gateway and a key of its own; the real key stays on the server.
    env = json.load(open(env_out))
    assert env["OPENAI_BASE_URL"] == f"{s.url}/llm/v1"
    assert env["OPENAI_API_KEY"].startswith("txk-" + t["id"])
    assert "UPSTREAM_SECRET" not in env and SECRET not in json.dumps(env)
    seen = upstream.seen()
    assert [p for p, _, _ in seen] == ["/v1/chat/completions"] * 2 + ["/v1/models"]
    assert {h.get("Authorization") for _, h, _ in seen} == {f"Bearer {SECRET}"}
    assert seen[0][2] == plain, "the body is forwarded as the agent sent it"

    calls = calls_of(s, t["id"], 2, tokens=True)
    words = ["echo:", " hello", " there", " world"]
    a, b = calls
    assert a["request"] == plain and a["stream"] is False and a["cut"] is False
    assert a["status"] == 200 and a["attempt"] == 1 and a["task_id"] == t["id"]
    assert a["message"] == {"role": "assistant", "content": "echo: hello there world",
                            "refusal": None, "annotations": None, "audio": None,
                            "function_call": None, "tool_calls": [], "reasoning": None}
    assert a["finish_reason"] == "stop" and a["model"] == fake_llm.MODEL
    assert a["token_ids"] == [fake_llm.tok_id(w) for w in words]
    assert a["logprobs"] == [-0.125] * 4
    assert a["prompt_token_ids"] == [fake_llm.tok_id(w) for w in ["hello", "there", "world"]]
    assert a["usage"]["completion_tokens"] == 4 and a["prompt_tokens"] == 3
    assert len(a["response"]["choices"][0]["logprobs"]["content"][0]["top_logprobs"]) == 2
    assert a["latency_ms"] > 0 and a["first_byte_ms"] <= a["latency_ms"]
    assert a["upstream"] == upstream.url
    # The stream, folded into the response it stands for; token ids from "token_id:N".
    assert b["stream"] is True and b["status"] == 200 and b["error"] is None
    assert b["message"] == {"role": "assistant", "content": "echo: a b c"}
    assert b["token_ids"] == [fake_llm.tok_id(w) for w in ["echo:", " a", " b", " c"]]
    assert b["usage"] == {"prompt_tokens": 3, "total_tokens": 7, "completion_tokens": 4}
    assert b["completion_tokens"] == 4 and b["finish_reason"] == "stop"
    # Without ?tokens the heavy parts are left out.
    light = calls_of(s, t["id"], 2)
    assert "token_ids" not in light[0] and light[0]["response"]["choices"][0]["logprobs"] is None
    assert light[0]["message"]["content"] == "echo: hello there world"


def test_upstream_errors_keep_their_status_and_body(make_server, upstream, tmpdir_path):
    s = gateway_server(make_server, upstream.url)
    t, env, release = held_task(s, tmpdir_path)
    r = post(env, {"model": "fake-error", "messages": []})
    assert r.status_code == 400
    assert r.json() == {"error": {"message": "This model's maximum context length is 32768 "
                                  "tokens. However, you requested 39197 tokens",
                                  "type": "BadRequestError", "param": None, "code": 400}}
    r = post(env, {"model": "fake-429", "messages": []})
    assert r.status_code == 429 and r.headers["Retry-After"] == "7"
    r = post(env, {"model": "fake-midstream-error", "stream": True,
                   "messages": [{"role": "user", "content": "1 2 3 4"}]}, stream=True)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    events = [line for line in r.iter_lines() if line]
    assert events[-1] == b"data: [DONE]" and b'"the engine died mid-stream"' in events[-2]
    release()
    calls = calls_of(s, t["id"], 3)
    assert [c["status"] for c in calls] == [400, 429, 200]
    assert calls[0]["error"].startswith("This model's maximum context length")
    assert calls[0]["response"]["error"]["type"] == "BadRequestError"
    assert calls[2]["error"] == "the engine died mid-stream"
    assert calls[2]["message"]["content"] == "echo: 1"


def test_unreachable_and_slow_upstreams_are_502_and_504(make_server, upstream, tmpdir_path):
    with socket.socket() as sock:        # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    s = gateway_server(make_server, dead, LLM_TIMEOUT_SECONDS=1)
    t, env, release = held_task(s, tmpdir_path)
    r = post(env, {"model": "m", "messages": []})
    assert r.status_code == 502, r.text
    assert r.json()["error"]["type"] == "upstream_unreachable"
    assert dead in r.json()["error"]["message"]
    release()
    s.wait_status(t["id"], ("completed",))
    calls = calls_of(s, t["id"], 1)
    assert calls[0]["status"] == 502 and dead in calls[0]["error"]

    # A slow upstream, named by the task itself.
    second = os.path.join(tmpdir_path, "second")
    os.makedirs(second)
    t, env, release = held_task(s, second, base_url=upstream.url)
    r = post(env, {"model": "fake-slow", "messages": []})
    assert r.status_code == 504 and r.json()["error"]["type"] == "upstream_timeout"
    release()
    calls = calls_of(s, t["id"], 1)
    assert calls[0]["status"] == 504 and "did not answer within 1 s" in calls[0]["error"]
    metrics = s.get("/metrics").text
    assert 'taskexec_llm_calls_total{outcome="unreachable"} 1\n' in metrics
    assert 'taskexec_llm_calls_total{outcome="timeout"} 1\n' in metrics
    assert "taskexec_llm_records_lost_total 0\n" in metrics


def test_keys_admit_one_running_attempt(make_server, upstream, tmpdir_path):
    s = gateway_server(make_server, upstream.url)
    t, env, release = held_task(s, tmpdir_path)
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    url = env["OPENAI_BASE_URL"] + "/chat/completions"
    r = requests.post(url, json=body)
    assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_api_key"
    for bad in ["", "Bearer", "Bearer nonsense", "Basic " + env["OPENAI_API_KEY"],
                # the last hex digit changed (to 0, or to 1 when it was 0)
                "Bearer " + env["OPENAI_API_KEY"][:-1] + ("1" if env["OPENAI_API_KEY"][-1] == "0"
                                                         else "0"),
                "Bearer txk-" + "0" * 36 + "-" + "a" * 40,
                "Bearer txk-" + "00000000-0000-4000-8000-000000000000-" + "a" * 40]:
        r = requests.post(url, json=body, headers={"Authorization": bad})
        assert r.status_code == 401, (bad, r.text)
    r = post(env, None, data="{not json")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = post(env, None, data="[1, 2]")
    assert r.status_code == 400
    r = requests.post(url, data="x" * (2 << 20),
                      headers={"Authorization": f"Bearer {env['OPENAI_API_KEY']}"})
    assert r.status_code == 413
    assert post(env, body).status_code == 200
    release()
    s.wait_status(t["id"], ("completed",))
    r = post(env, body)
    assert r.status_code == 401, "the key of an ended attempt admits nothing"
    assert requests.get(env["OPENAI_BASE_URL"] + "/models").status_code == 401
    assert len(calls_of(s, t["id"], 1)) == 1, "refused requests are not recorded"
    assert [p for p, _, _ in upstream.seen()] == ["/v1/chat/completions"]


def test_a_task_may_have_so_many_calls_in_flight(make_server, upstream, tmpdir_path):
    import concurrent.futures
    s = gateway_server(make_server, upstream.url, LLM_MAX_CALLS_PER_TASK=2)
    t, env, release = held_task(s, tmpdir_path)
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        futs = [ex.submit(post, env, {"model": "fake-slow", "messages": []}) for _ in range(4)]
        codes = sorted(f.result().status_code for f in futs)
    assert codes == [200, 200, 429, 429], codes
    release()
    assert len(calls_of(s, t["id"], 2)) == 2


def test_an_agent_leaving_mid_stream_is_recorded_as_cut(make_server, upstream, tmpdir_path):
    s = gateway_server(make_server, upstream.url)
    t, env, release = held_task(s, tmpdir_path)
    r = post(env, {"model": "fake-stall", "stream": True,
                   "messages": [{"role": "user", "content": "1 2 3 4 5"}]}, stream=True)
    assert r.status_code == 200
    lines = r.iter_lines()
    got = []
    for line in lines:
        if line.startswith(b"data: "):
            got.append(json.loads(line[6:]))
        if len(got) == 3:
            break
    r.close()                             # the agent goes away mid-stream
    calls = calls_of(s, t["id"], 1)
    assert calls[0]["cut"] is True and calls[0]["stream"] is True
    assert calls[0]["message"]["content"] == "echo: 1", "what had passed is kept"
    assert calls[0]["error"] == "the agent went away before the end"
    assert 'taskexec_llm_calls_total{outcome="cut"} 1\n' in s.get("/metrics").text
    release()
    assert s.wait_status(t["id"], ("completed",))["status"] == "completed"


def test_without_an_upstream_nothing_changes(make_server, tmpdir_path):
    s = make_server(EXECUTOR="command", EXECUTOR_COMMAND=AGENT, NUM_INTERNAL_WORKERS=1,
                    OPENAI_API_KEY="the-users-own")
    env_out = os.path.join(tmpdir_path, "env.json")
    t = s.submit(problem_id="p", agent_config={"env_out": env_out})
    assert s.wait_status(t["id"], ("completed",))["status"] == "completed"
    env = json.load(open(env_out))
    assert "OPENAI_BASE_URL" not in env and env["OPENAI_API_KEY"] == "the-users-own"
    assert "TASKEXEC_LLM_GATEWAY" not in env


def test_a_task_may_name_its_upstream_and_only_allowed_key_variables(make_server, upstream,
                                                                     tmpdir_path):
    s = make_server(EXECUTOR="command", EXECUTOR_COMMAND=AGENT, NUM_INTERNAL_WORKERS=1,
                    LLM_KEY_ENVS="TEAM_KEY", TEAM_KEY="sk-team", OTHER_SECRET="sk-other")
    call = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    t = s.submit(problem_id="p", agent_config={"base_url": upstream.url + "/",
                                               "api_key_env": "TEAM_KEY", "calls": [call]})
    assert s.wait_status(t["id"], ("completed",))["result"]["output"]["calls"][0]["status"] == 200
    assert upstream.seen()[-1][1]["Authorization"] == "Bearer sk-team"
    t = s.submit(problem_id="p", agent_config={"base_url": upstream.url,
                                               "api_key_env": "OTHER_SECRET", "calls": [call]})
    got = s.wait_status(t["id"], ("completed",))["result"]["output"]["calls"][0]
    assert got["status"] == 502 and "LLM_KEY_ENVS" in got["body"]["error"]["message"]
    assert len(upstream.seen()) == 1, "a variable the server does not allow is never sent"


def test_an_external_workers_agent_is_recorded_by_its_api(make_server, make_worker, upstream):
    s = gateway_server(make_server, upstream.url, NUM_INTERNAL_WORKERS=0)
    w = make_worker(s, "ext-llm-1", EXECUTOR="command", EXECUTOR_COMMAND=AGENT)
    call = {"model": "m", "messages": [{"role": "user", "content": "from afar"}],
            "logprobs": True}
    t = s.submit(problem_id="p", agent_config={"calls": [call]})
    done = s.wait_status(t["id"], ("completed", "failed"), timeout=40)
    assert done["status"] == "completed", w.log()
    assert done["result"]["output"]["base_url"] == f"{s.url}/llm/v1"
    c = calls_of(s, t["id"], 1, tokens=True)[0]
    assert c["message"]["content"] == "echo: from afar" and c["logprobs"] == [-0.125] * 3


def test_export_carries_the_calls(make_server, upstream):
    s = gateway_server(make_server, upstream.url, NUM_INTERNAL_WORKERS=1)
    call = {"model": "m", "messages": [{"role": "user", "content": "x y"}],
            "return_token_ids": True}
    t = s.submit(problem_id="p", agent_config={"calls": [call, call]})
    s.wait_status(t["id"], ("completed",))
    calls_of(s, t["id"], 2)
    for fmt in ("json", "jsonl"):
        r = s.get(f"/api/v1/export?format={fmt}")
        assert r.status_code == 200
        items = (r.json()["tasks"] if fmt == "json"
                 else [json.loads(line) for line in r.text.splitlines()])
        item = next(i for i in items if i["task"]["id"] == t["id"])
        assert [c["token_ids"] for c in item["llm_calls"]] == [
            [fake_llm.tok_id(w) for w in ["echo:", " x", " y"]]] * 2
        assert item["llm_calls"][0]["request"] == call


def test_the_readme_example(make_server, upstream, tmpdir_path):
    """The README's gateway example, run as the executor's shell would run it."""
    import re
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    readme = open(os.path.join(root, "README.md")).read()
    section = readme.split("## LLM gateway", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    s = gateway_server(make_server, upstream.url)
    t, env, release = held_task(s, tmpdir_path)
    lines = block.strip().splitlines()
    first, last = "\n".join(lines[:-1]), lines[-1].replace("localhost:8000", s.url[7:])
    run_env = dict(os.environ, OPENAI_BASE_URL=env["OPENAI_BASE_URL"],
                   OPENAI_API_KEY=env["OPENAI_API_KEY"], TASK=t["id"])
    out = subprocess.run(["bash", "-ec", first], env=run_env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["choices"][0]["message"]["content"] == "echo: hi"
    calls_of(s, t["id"], 1)
    out = subprocess.run(["bash", "-ec", last], env=run_env, capture_output=True, text=True)
    got = json.loads(out.stdout)
    assert got["total"] == 1 and got["calls"][0]["token_ids"] == [fake_llm.tok_id("echo:"),
                                                                    fake_llm.tok_id(" hi")]
    release()


def test_the_dashboard_shows_each_call_and_its_tokens_on_demand(make_server, upstream):
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    s = gateway_server(make_server, upstream.url, NUM_INTERNAL_WORKERS=1)
    call = {"model": "m", "messages": [{"role": "user", "content": "p q"}], "logprobs": True,
            "return_tokens_as_token_ids": True}
    t = s.submit(problem_id="p", agent_config={"calls": [call, dict(call, stream=True)]})
    s.wait_status(t["id"], ("completed",))
    calls_of(s, t["id"], 2)
    want = {"calls": 2, "answer": "echo: p q",
            "token_ids": [fake_llm.tok_id(w) for w in ["echo:", " p", " q"]]}
    shots = os.path.join(root, "build", "screenshots")
    os.makedirs(shots, exist_ok=True)
    r = subprocess.run(["node", os.path.join(root, "tests", "e2e", "llm_calls.cjs"), s.url,
                        t["id"], json.dumps(want), os.path.join(shots, "llm-calls.png")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_task_chosen_upstream_never_gets_the_servers_key(make_server, upstream, tmpdir_path):
    s = gateway_server(make_server, upstream.url)
    call = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    t = s.submit(problem_id="p", agent_config={"base_url": upstream.url, "calls": [call]})
    got = s.wait_status(t["id"], ("completed",))["result"]["output"]["calls"][0]
    assert got["status"] == 200
    assert "Authorization" not in upstream.seen()[-1][1], "no key unless the task names one"
    n = len(upstream.seen())
    for base in [upstream.url + "#frag", upstream.url + "/x?y=1",
                 upstream.url.replace("http://", "http://user:pw@"), "file:///etc/passwd",
                 "gopher://127.0.0.1/"]:
        t = s.submit(problem_id="p", agent_config={"base_url": base, "calls": [call]})
        got = s.wait_status(t["id"], ("completed",))["result"]["output"]["calls"][0]
        assert got["status"] == 502, (base, got)
        assert got["body"]["error"]["type"] == "upstream_not_configured", got
    assert len(upstream.seen()) == n, "nothing was sent"
    t = s.submit(problem_id="p", agent_config={"api_key_env": "UPSTREAM_SECRET",
                                               "base_url": upstream.url, "calls": [call]})
    got = s.wait_status(t["id"], ("completed",))["result"]["output"]["calls"][0]
    assert got["status"] == 502 and "LLM_KEY_ENVS" in got["body"]["error"]["message"]


def test_an_agent_leaving_a_silent_stream_frees_its_slot(make_server, upstream, tmpdir_path):
    s = gateway_server(make_server, upstream.url, LLM_MAX_CALLS_PER_TASK=1)
    t, env, release = held_task(s, tmpdir_path)
    r = post(env, {"model": "fake-silent", "stream": True,
                   "messages": [{"role": "user", "content": "1 2 3"}]}, stream=True)
    next(line for line in r.iter_lines() if line.startswith(b"data: "))
    r.close()
    left = time.time()
    calls = calls_of(s, t["id"], 1, timeout=6)
    assert calls[0]["cut"] is True and time.time() - left < 4, "noticed while the upstream is silent"
    assert post(env, {"model": "m", "messages": []}).status_code == 200, "its slot is free"
    # A parked plain call whose agent leaves is noticed too.
    import socket as so
    with so.create_connection(("127.0.0.1", s.port)) as c:
        body = json.dumps({"model": "fake-slow", "messages": []})
        c.sendall((f"POST /llm/v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                   f"{env['OPENAI_API_KEY']}\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n{body}").encode())
        time.sleep(0.3)
    calls = calls_of(s, t["id"], 3, timeout=6)
    gone = [c for c in calls if c["request"]["model"] == "fake-slow"][0]
    assert gone["cut"] is True and gone["status"] == 499, gone
    release()


def test_odd_answers_are_passed_and_recorded_whole(make_server, upstream, tmpdir_path):
    s = gateway_server(make_server, upstream.url, LLM_MAX_CALLS_PER_TASK=1)
    t, env, release = held_task(s, tmpdir_path)
    r = post(env, {"model": "fake-latin1", "messages": []})
    assert r.status_code == 502 and r.content == "<h1>Passerelle d\xe9faillante</h1>".encode("latin-1")
    r = post(env, {"model": "fake-nul", "messages": []})
    assert r.status_code == 200 and r.content == b"before\x00after"
    r = post(env, {"model": "fake-empty", "messages": []})
    assert r.status_code == 200 and r.content == b""
    # Back to back, one at a time: never refused as one too many.
    with requests.Session() as sess:
        codes = [sess.post(env["OPENAI_BASE_URL"] + "/chat/completions",
                           json={"model": "m", "messages": []},
                           headers={"Authorization": "Bearer " + env["OPENAI_API_KEY"]}).status_code
                 for _ in range(100)]
    assert set(codes) == {200}, codes
    release()
    calls = calls_of(s, t["id"], 103)
    assert calls[0]["status"] == 502 and calls[0]["response"] == "<h1>Passerelle d?faillante</h1>"
    assert calls[2]["error"] == "the upstream answered with an empty body"
    assert "taskexec_llm_records_lost_total 0\n" in s.get("/metrics").text
