"""A stand-in for an OpenAI-compatible model server (vLLM's), on 127.0.0.1, for the LLM
gateway's tests and bench.

What it mirrors, and from where (details and sources in docs/notes/llm-gateway-shapes.md):
- vLLM's chat completion response (vllm/entrypoints/openai/chat_completion/protocol.py,
  serving.py): every field serialised with nulls included; choices[].logprobs.content[]
  entries {"token", "logprob", "bytes", "top_logprobs"} when the request has
  logprobs: true; "token_id:N" tokens with return_tokens_as_token_ids; choices[].token_ids
  and top-level prompt_token_ids with return_token_ids; "stop_reason" beside
  "finish_reason"; usage {"prompt_tokens", "total_tokens", "completion_tokens",
  "prompt_tokens_details"}.
- vLLM's stream (serving.py chat_completion_stream_generator): "data: <compact JSON>\\n\\n"
  events, no event/id lines; a first chunk with delta {"role": "assistant", "content": ""},
  then content deltas (with their logprobs and token_ids when asked), a chunk with the
  finish_reason, then with stream_options.include_usage a chunk with "choices": [] and
  the usage, then "data: [DONE]". Chunks are serialised without unset fields.
- vLLM's errors since v0.10.1 (engine/protocol.py ErrorResponse): {"error": {"message",
  "type", "param", "code": <int status>}}; a stream failing after it started sends
  data: {"error": {...}} then data: [DONE] with status 200.
- GET /v1/models: {"object": "list", "data": [{"id", "object": "model", "created",
  "owned_by": "vllm", "root", "parent", "max_model_len", "permission": [...]}]}.
Behaviour is chosen by the request's model name: "fake-error" answers 400, "fake-500"
a 500, "fake-slow" waits 3 s, "fake-midstream-error" breaks its stream with an error
chunk, "fake-stall" sends two chunks and then comments until the client goes away,
"fake-silent" one chunk and then 8 s of silence; "fake-latin1" a proxy's Latin-1 error
page, "fake-nul" a body with a NUL byte, "fake-empty" an empty 200.
The tokenizer is a toy (one token per word); ids are stable per word.
Run: fake_llm.py [port] — prints "port N" and serves until killed."""
import json
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "fake/model-1"


def tok_id(word):
    return zlib.crc32(word.encode()) % 50000 + 100


def words(text):
    out = []
    for i, w in enumerate(text.split(" ")):
        out.append(w if i == 0 else " " + w)
    return out


class Fake:
    def __init__(self):
        self.requests = []        # (path, headers dict, body dict or None)
        self.lock = threading.Lock()

    def seen(self):
        with self.lock:
            return list(self.requests)


def reply_text(req):
    msgs = req.get("messages") or []
    last = msgs[-1].get("content") if msgs else ""
    if isinstance(last, list):
        last = " ".join(p.get("text", "") for p in last if isinstance(p, dict))
    return f"echo: {last}"


def logprob_entry(word, as_ids, top):
    tok = f"token_id:{tok_id(word)}" if as_ids else word
    e = {"token": tok, "logprob": -0.125, "bytes": list(word.encode()), "top_logprobs": []}
    for k in range(top):
        alt = word if k == 0 else f"{word}#{k}"
        e["top_logprobs"].append({"token": f"token_id:{tok_id(alt)}" if as_ids else alt,
                                  "logprob": -0.125 - k, "bytes": list(alt.encode())})
    return e


def make_handler(fake):
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Head and body in one write, no Nagle delay: as a real server (uvicorn) answers,
        # so a measurement through the gateway is not a measurement of this stand-in.
        wbufsize = 1 << 16
        disable_nagle_algorithm = True

        def log_message(self, *a):
            pass

        def send_json(self, status, obj):
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if status == 429:
                self.send_header("Retry-After", "7")
            self.end_headers()
            self.wfile.write(body)

        def raw(self, status, content_type, body):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def error(self, status, message, typ):
            self.send_json(status, {"error": {"message": message, "type": typ, "param": None,
                                              "code": status}})

        def do_GET(self):
            with fake.lock:
                fake.requests.append((self.path, dict(self.headers), None))
            if self.path.rstrip("/") != "/v1/models":
                return self.error(404, f"no route {self.path}", "NotFoundError")
            self.send_json(200, {"object": "list", "data": [{
                "id": MODEL, "object": "model", "created": 1700000000, "owned_by": "vllm",
                "root": MODEL, "parent": None, "max_model_len": 32768,
                "permission": [{"id": "modelperm-1", "object": "model_permission",
                                "created": 1700000000, "allow_create_engine": False,
                                "allow_sampling": True, "allow_logprobs": True,
                                "allow_search_indices": False, "allow_view": True,
                                "allow_fine_tuning": False, "organization": "*",
                                "group": None, "is_blocking": False}]}]})

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n)
            try:
                req = json.loads(raw)
            except ValueError:
                req = None
            with fake.lock:
                fake.requests.append((self.path, dict(self.headers), req))
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self.error(404, f"no route {self.path}", "NotFoundError")
            if not isinstance(req, dict):
                return self.error(400, "the body is not JSON", "BadRequestError")
            model = req.get("model") or ""
            if model == "fake-error":
                return self.error(400, "This model's maximum context length is 32768 tokens. "
                                  "However, you requested 39197 tokens", "BadRequestError")
            if model == "fake-500":
                return self.error(500, "the engine died", "InternalServerError")
            if model == "fake-429":
                return self.error(429, "slow down", "RateLimitError")
            if model == "fake-slow":
                time.sleep(3)
            if model == "fake-latin1":      # a proxy's error page, not UTF-8
                return self.raw(502, "text/html; charset=iso-8859-1",
                                "<h1>Passerelle d\xe9faillante</h1>".encode("latin-1"))
            if model == "fake-nul":
                return self.raw(200, "application/octet-stream", b"before\x00after")
            if model == "fake-empty":
                return self.raw(200, "application/json", b"")
            if req.get("stream"):
                return self.stream(req, model)
            return self.whole(req)

        def common(self, req):
            text = reply_text(req)
            ws = words(text)
            prompt = [tok_id(w) for m in req.get("messages") or []
                      for w in str(m.get("content")).split(" ")]
            return text, ws, prompt

        def whole(self, req):
            text, ws, prompt = self.common(req)
            choice = {"index": 0, "message": {
                "role": "assistant", "content": text, "refusal": None, "annotations": None,
                "audio": None, "function_call": None, "tool_calls": [], "reasoning": None},
                "logprobs": None, "finish_reason": "stop", "stop_reason": None,
                "token_ids": None}
            if req.get("logprobs"):
                choice["logprobs"] = {"content": [
                    logprob_entry(w, bool(req.get("return_tokens_as_token_ids")),
                                  int(req.get("top_logprobs") or 0)) for w in ws]}
            if req.get("return_token_ids"):
                choice["token_ids"] = [tok_id(w) for w in ws]
            self.send_json(200, {
                "id": "chatcmpl-fake", "object": "chat.completion", "created": 1700000000,
                "model": MODEL, "choices": [choice], "service_tier": None,
                "system_fingerprint": None,
                "usage": {"prompt_tokens": len(prompt), "total_tokens": len(prompt) + len(ws),
                          "completion_tokens": len(ws), "prompt_tokens_details": None},
                "prompt_logprobs": None,
                "prompt_token_ids": prompt if req.get("return_token_ids") else None,
                "kv_transfer_params": None})

        def event(self, obj):
            data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
            chunk = f"data: {data}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()

        def stream(self, req, model):
            text, ws, prompt = self.common(req)
            as_ids = bool(req.get("return_tokens_as_token_ids"))
            top = int(req.get("top_logprobs") or 0)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                    "created": 1700000000, "model": MODEL}
            first = dict(base, choices=[{"index": 0, "delta": {"role": "assistant",
                                                               "content": ""},
                                         "logprobs": None, "finish_reason": None}])
            first["prompt_token_ids"] = prompt if req.get("return_token_ids") else None
            try:
                self.event(first)
                for i, w in enumerate(ws):
                    if model == "fake-midstream-error" and i == 2:
                        self.event({"error": {"message": "the engine died mid-stream",
                                              "type": "InternalServerError", "param": None,
                                              "code": 500}})
                        self.event("[DONE]")
                        self.wfile.write(b"0\r\n\r\n")
                        return
                    if model == "fake-silent" and i == 1:
                        time.sleep(8)          # silence: nothing tells the gateway anything
                        return
                    if model == "fake-stall" and i == 2:
                        for _ in range(600):  # until the gateway hangs up (2 min at most)
                            time.sleep(0.2)
                            self.wfile.write(b"2\r\n:\n\r\n")  # an SSE comment, one chunk
                            self.wfile.flush()
                        return
                    c = {"index": 0, "delta": {"content": w}, "logprobs": None,
                         "finish_reason": None}
                    if req.get("logprobs"):
                        c["logprobs"] = {"content": [logprob_entry(w, as_ids, top)]}
                    if req.get("return_token_ids"):
                        c["token_ids"] = [tok_id(w)]
                    self.event(dict(base, choices=[c]))
                self.event(dict(base, choices=[{"index": 0, "delta": {}, "logprobs": None,
                                                "finish_reason": "stop", "stop_reason": None}]))
                if (req.get("stream_options") or {}).get("include_usage"):
                    self.event(dict(base, choices=[], usage={
                        "prompt_tokens": len(prompt), "total_tokens": len(prompt) + len(ws),
                        "completion_tokens": len(ws)}))
                self.event("[DONE]")
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
    return H


def start(port=0):
    """Starts the fake in a thread; returns (server, fake). server.shutdown() stops it."""
    fake = Fake()
    srv = ThreadingHTTPServer(("127.0.0.1", port), make_handler(fake))
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, fake


if __name__ == "__main__":
    srv, _ = start(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    print("port", srv.server_address[1], flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
