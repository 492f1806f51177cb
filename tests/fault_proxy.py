"""A loopback HTTP proxy that injects faults before forwarding to an upstream server.

`faults` is a list consumed one per chat request: "429" (with Retry-After: 1), "500", "slow"
(answers after `slow_seconds`), "drop" (closes the connection without a reply), "badjson"
(200 with a body that is not JSON), or "ok" (forward). When the list is empty, all forward.
"""

from __future__ import annotations

import asyncio
import threading

import httpx


class FaultProxy:
    def __init__(self, upstream: str, faults: list[str], slow_seconds: float = 5.0) -> None:
        self.upstream, self.faults, self.slow = upstream.rstrip("/"), list(faults), slow_seconds
        self.seen: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        async def stop() -> None:
            self.server.close()
            await self.client.aclose()
            self.loop.stop()

        asyncio.run_coroutine_threadsafe(stop(), self.loop)
        self.thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.client = httpx.AsyncClient(timeout=120)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
                length = int({k.lower(): v for k, v in headers.items()}.get("content-length", 0))
                body = await reader.readexactly(length) if length else b""
                fault = "ok"
                if path.endswith("/chat/completions") and self.faults:
                    fault = self.faults.pop(0)
                self.seen.append(fault)
                if fault == "drop":
                    writer.close()
                    return
                if fault == "slow":
                    await asyncio.sleep(self.slow)
                if fault in ("429", "500"):
                    msg = b'{"error": {"message": "injected"}}'
                    extra = b"Retry-After: 1\r\n" if fault == "429" else b""
                    status = b"429 Too Many Requests" if fault == "429" else b"500 Error"
                    writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
                                 + extra + b"Content-Length: %d\r\n\r\n" % len(msg) + msg)
                    await writer.drain()
                    continue
                if fault == "badjson":
                    msg = b'{"id": "x", "choices": [ {not json'
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\n\r\n" % len(msg) + msg)
                    await writer.drain()
                    continue
                resp = await self.client.request(
                    method, self.upstream + path.removeprefix("/v1"), content=body,
                    headers={"content-type": "application/json"})
                writer.write(b"HTTP/1.1 %d OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n" % (resp.status_code, len(resp.content))
                             + resp.content)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if not self.loop.is_closed():
                writer.close()
