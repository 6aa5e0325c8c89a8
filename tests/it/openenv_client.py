"""A stand-in for OpenEnv's GenericEnvClient, for tests: the real client
(meta-pytorch/OpenEnv 685de41, src/openenv/core/env_client.py, generic_client.py,
sync_client.py, utils.py) cannot be installed here (it needs websockets>=15, pydantic 2,
fastapi and fastmcp from PyPI), so this mirrors what it does on the wire with Debian's
websockets 10.4:
- the URL: base_url without trailing slashes, http->ws / https->wss, then "/ws"
  (utils.convert_to_ws_url, EnvClient.__init__);
- connect with open_timeout 10 s and max_size 100 MiB; the library's defaults offer
  permessage-deflate and ping every 20 s with a 20 s timeout (as websockets 15-17);
- every message is json.dumps(...) (ASCII-escaped), one text frame; reset sends
  {"type":"reset","data":{kwargs}}, step {"type":"step","data":<the action dict as is>},
  state {"type":"state"}, close {"type":"close"} and then a close frame 1000;
- each request reads exactly one reply within 60 s (asyncio.wait_for); an error reply
  raises RuntimeError("Server error: <message> (code: <code>)"); reset/step give a
  StepResult(observation, reward, done) from data, state gives data as is.
Not mirrored: the sync wrapper's background thread (tests use asyncio directly) and the
providers (Docker, uv)."""
import asyncio
import json
from dataclasses import dataclass
from typing import Any, Optional

import websockets


def convert_to_ws_url(url: str) -> str:
    url = url.rstrip("/")
    if url.startswith("http://"):
        return "ws://" + url[len("http://"):]
    if url.startswith("https://"):
        return "wss://" + url[len("https://"):]
    if url.startswith(("ws://", "wss://")):
        return url
    return "ws://" + url


@dataclass
class StepResult:
    observation: Any
    reward: Optional[float] = None
    done: bool = False


class GenericEnvClient:
    def __init__(self, base_url, connect_timeout_s=10.0, message_timeout_s=60.0,
                 max_message_size_mb=100.0):
        self._ws_url = f"{convert_to_ws_url(base_url)}/ws"
        self._connect_timeout = connect_timeout_s
        self._message_timeout = message_timeout_s
        self._max_size = int(max_message_size_mb * 1024 * 1024)
        self._ws = None

    async def connect(self):
        if self._ws is None:
            try:
                self._ws = await websockets.connect(self._ws_url, open_timeout=self._connect_timeout,
                                                    max_size=self._max_size)
            except Exception as e:
                raise ConnectionError(f"Failed to connect to {self._ws_url}: {e}") from e
        return self

    async def _send_and_receive(self, message):
        await self.connect()
        await self._ws.send(json.dumps(message))
        raw = await asyncio.wait_for(self._ws.recv(), timeout=self._message_timeout)
        reply = json.loads(raw)
        if reply.get("type") == "error":
            data = reply.get("data", {})
            raise RuntimeError(f"Server error: {data.get('message', 'Unknown error')} "
                               f"(code: {data.get('code', 'UNKNOWN')})")
        return reply

    async def reset(self, **kwargs):
        data = (await self._send_and_receive({"type": "reset", "data": kwargs})).get("data", {})
        return StepResult(data.get("observation", {}), data.get("reward"), data.get("done", False))

    async def step(self, action):
        payload = action if isinstance(action, dict) else vars(action)
        data = (await self._send_and_receive({"type": "step", "data": payload})).get("data", {})
        return StepResult(data.get("observation", {}), data.get("reward"), data.get("done", False))

    async def state(self):
        return (await self._send_and_receive({"type": "state"})).get("data", {})

    async def disconnect(self):
        if self._ws is not None:
            try:
                await self._ws.send(json.dumps({"type": "close"}))
            except Exception:
                pass
            await self._ws.close()
            self._ws = None

    async def __aenter__(self):
        return await self.connect()

    async def __aexit__(self, *exc):
        await self.disconnect()
