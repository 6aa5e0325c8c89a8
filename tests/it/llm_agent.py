#!/usr/bin/python3
"""A `command` executor that is an agent speaking the OpenAI API the way openai-python does
(POST {OPENAI_BASE_URL}/chat/completions with Authorization: Bearer $OPENAI_API_KEY, the
stream read event by event until "data: [DONE]"), for the LLM gateway's tests. It knows
nothing of taskexec beyond those two variables, as a user's agent would not.

agent_config.calls: the calls to make, each a request body (stream or not); "list_models":
true also asks GET /models. agent_config.env_out: a file to write its environment to;
agent_config.hold: a file whose appearance it waits for (60 s at most) before it ends.
Its result's output lists, per call, the status and the text it got."""
import json
import os
import sys
import time
import urllib.error
import urllib.request


def out(obj):
    print(json.dumps(obj), flush=True)


def call(base, key, body):
    req = urllib.request.Request(base.rstrip("/") + "/chat/completions",
                                 data=json.dumps(body).encode(), method="POST", headers={
                                     "Content-Type": "application/json",
                                     "Authorization": f"Bearer {key}",
                                     "Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            if not body.get("stream"):
                data = json.load(r)
                return {"status": r.status, "text": data["choices"][0]["message"]["content"]}
            text, done, error = "", False, None
            for raw in r:
                line = raw.decode().rstrip("\r\n")
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    error = chunk["error"]["message"]
                    continue
                for c in chunk.get("choices") or []:
                    text += (c.get("delta") or {}).get("content") or ""
            return {"status": r.status, "text": text, "done": done, "error": error}
    except urllib.error.HTTPError as e:
        return {"status": e.code, "body": json.loads(e.read() or b"null")}


def main():
    task = json.loads(sys.stdin.readline())
    cfg = task["parameters"].get("agent_config") or {}
    base, key = os.environ.get("OPENAI_BASE_URL"), os.environ.get("OPENAI_API_KEY")
    if cfg.get("env_out"):
        with open(cfg["env_out"], "w") as f:
            json.dump(dict(os.environ), f)
    results = []
    if base:
        for body in cfg.get("calls") or []:
            results.append(call(base, key, body))
            out({"type": "log", "level": "info", "message": "called the model",
                 "context": results[-1]})
        if cfg.get("list_models"):
            req = urllib.request.Request(base.rstrip("/") + "/models",
                                         headers={"Authorization": f"Bearer {key}"})
            with urllib.request.urlopen(req, timeout=30) as r:
                results.append({"status": r.status, "models": json.load(r)})
    if cfg.get("hold"):
        deadline = time.time() + 60
        while not os.path.exists(cfg["hold"]) and time.time() < deadline:
            time.sleep(0.05)
    out({"type": "result", "success": True, "output": {"base_url": base, "calls": results}})


if __name__ == "__main__":
    main()
