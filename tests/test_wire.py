"""provider.wire: an answer's head and body go out in one write, and nothing is held back
that a client waits for. A real uvicorn server on loopback, spoken to over raw sockets;
the connection's real transport is wrapped only to count what is written to it."""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import uvloop

from provider.wire import CONTINUE, PROTOCOL, HeldHead, OneWriteProtocol

READ_TIMEOUT_S = 30.0  # a bound on a hang, not a measure

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
# `provider serve` runs on uvloop; under another server the protocol meets asyncio's own
# transports (whose writelines differs). Each server test runs on both.
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}


def on_both_loops(test: Callable[..., Awaitable[None]]) -> Any:
    """The async test, run to completion on a fresh loop of each kind."""
    def run(loop: str, **kwargs: Any) -> None:
        with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
            runner.run(test(**kwargs))  # type: ignore[arg-type]

    signature = inspect.signature(test)
    run.__signature__ = signature.replace(parameters=[  # type: ignore[attr-defined]
        inspect.Parameter("loop", inspect.Parameter.KEYWORD_ONLY),
        *(p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
          for p in signature.parameters.values())])
    run.__name__, run.__qualname__, run.__doc__ = test.__name__, test.__qualname__, test.__doc__
    return pytest.mark.parametrize("loop", list(LOOPS))(run)


class Counted:
    """The connection's transport, each write and writelines call recorded."""

    def __init__(self, transport: asyncio.Transport, calls: list[tuple[str, bytes]]) -> None:
        self._transport = transport
        self._calls = calls

    def write(self, data: bytes) -> None:
        self._calls.append(("write", bytes(data)))
        self._transport.write(data)

    def writelines(self, parts: Any) -> None:
        parts = [bytes(p) for p in parts]
        self._calls.append(("writelines", b"".join(parts)))
        self._transport.writelines(parts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def counting_protocol(calls: list[tuple[str, bytes]]) -> type[OneWriteProtocol]:
    class CountingProtocol(OneWriteProtocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self.transport = Counted(transport, calls)  # type: ignore[assignment]

    return CountingProtocol


@asynccontextmanager
async def serving(app: App, protocol: type[Any]) -> AsyncIterator[int]:
    config = uvicorn.Config(app, host="127.0.0.1", port=0, http=protocol, lifespan="off",
                            log_level="critical", access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, READ_TIMEOUT_S)


async def answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One response: (head, body), read by its Content-Length."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await asyncio.wait_for(reader.readexactly(length), READ_TIMEOUT_S)
    return head, body


async def send_whole(send: Any, body: bytes, *headers: tuple[bytes, bytes]) -> None:
    """A 200 with a content-length, its head and its body sent as an app sends them."""
    await send({"type": "http.response.start", "status": 200,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send_whole(send, b'{"keys":[]}', (b"content-type", b"application/json"))


def request(method: str = "GET", path: str = "/", extra: bytes = b"") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: test\r\n".encode() + extra + b"\r\n"


@on_both_loops
async def test_each_answer_is_one_write_on_a_kept_alive_connection() -> None:
    calls: list[tuple[str, bytes]] = []
    async with serving(hello, counting_protocol(calls)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(3):
            writer.write(request())
            head, body = await answer(reader)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert body == b'{"keys":[]}'
        writer.close()
    assert [kind for kind, _ in calls] == ["writelines"] * 3
    assert all(data.endswith(b'\r\n\r\n{"keys":[]}') for _, data in calls)


@on_both_loops
async def test_pipelined_requests_get_their_answers_in_order() -> None:
    async def path_echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send_whole(send, scope["path"].encode())

    calls: list[tuple[str, bytes]] = []
    async with serving(path_echo, counting_protocol(calls)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request(path="/one") + request(path="/two") + request(path="/three"))
        bodies = [(await answer(reader))[1] for _ in range(3)]
        writer.close()
    assert bodies == [b"/one", b"/two", b"/three"]
    assert [kind for kind, _ in calls] == ["writelines"] * 3


@on_both_loops
async def test_a_head_answer_is_not_held() -> None:
    """A HEAD answer has no body write: its head goes out alone, at once."""
    calls: list[tuple[str, bytes]] = []
    async with serving(hello, counting_protocol(calls)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request("HEAD"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
        # The connection still serves a GET after it.
        writer.write(request())
        _, body = await answer(reader)
        writer.close()
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: 11" in head
    assert body == b'{"keys":[]}'
    assert [kind for kind, _ in calls] == ["write", "writelines"]


@on_both_loops
async def test_continue_goes_out_before_the_body_is_read() -> None:
    """``Expect: 100-continue``: the client sends its body only after the interim answer,
    so holding that back would hang both ends."""
    async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send_whole(send, body)

    calls: list[tuple[str, bytes]] = []
    async with serving(echo, counting_protocol(calls)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request("POST", extra=b"Content-Length: 5\r\nExpect: 100-continue\r\n"))
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
        writer.write(b"hello")
        head, body = await answer(reader)
        writer.close()
    assert interim == CONTINUE
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == b"hello"
    assert calls == [("write", CONTINUE), ("writelines", head + body)]


@pytest.mark.parametrize("ending", ["raises", "returns"])
@on_both_loops
async def test_a_head_without_its_body_goes_out_when_the_connection_closes(
        ending: str) -> None:
    """The app stops after its head: uvicorn closes the connection, and the head is
    written first."""
    async def stops_after_head(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"100")]})
        if ending == "raises":
            raise RuntimeError("failed after the head")

    calls: list[tuple[str, bytes]] = []
    async with serving(stops_after_head, counting_protocol(calls)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request())
        received = await asyncio.wait_for(reader.read(), READ_TIMEOUT_S)  # to EOF
        writer.close()
    assert received.startswith(b"HTTP/1.1 200 OK\r\n") and received.endswith(b"\r\n\r\n")
    assert [kind for kind, _ in calls] == ["write"]


@on_both_loops
async def test_a_streamed_answer_sends_its_head_with_the_first_part() -> None:
    gate = asyncio.Event()

    async def streams(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"10")]})
        await send({"type": "http.response.body", "body": b"01234", "more_body": True})
        await gate.wait()
        await send({"type": "http.response.body", "body": b"56789"})

    calls: list[tuple[str, bytes]] = []
    async with serving(streams, counting_protocol(calls)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request())
        # The first part arrives, with the head, before the app may send the second.
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
        first = await asyncio.wait_for(reader.readexactly(5), READ_TIMEOUT_S)
        gate.set()
        second = await asyncio.wait_for(reader.readexactly(5), READ_TIMEOUT_S)
        writer.close()
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert (first, second) == (b"01234", b"56789")
    assert calls == [("writelines", head + b"01234"), ("write", b"56789")]


@on_both_loops
async def test_a_chunked_answer_is_whole() -> None:
    async def no_length(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"abc"})

    async with serving(no_length, OneWriteProtocol) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request(extra=b"Connection: close\r\n"))
        received = await asyncio.wait_for(reader.read(), READ_TIMEOUT_S)
        writer.close()
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"transfer-encoding: chunked\r\n" in received
    assert received.endswith(b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n")


@on_both_loops
async def test_an_empty_body_goes_out_with_its_head_and_the_connection_goes_on() -> None:
    async def no_content(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/empty":
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        else:
            await hello(scope, receive, send)

    calls: list[tuple[str, bytes]] = []
    async with serving(no_content, counting_protocol(calls)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request(path="/empty"))
        empty = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
        writer.write(request())
        _, body = await answer(reader)
        # Connection: close after an empty answer: it closes (nothing left in a buffer).
        writer.write(request(path="/empty", extra=b"Connection: close\r\n"))
        last = await asyncio.wait_for(reader.read(), READ_TIMEOUT_S)  # to EOF
        writer.close()
    assert empty.startswith(b"HTTP/1.1 204 No Content\r\n")
    assert body == b'{"keys":[]}'
    assert last.startswith(b"HTTP/1.1 204 No Content\r\n") and last.endswith(b"\r\n\r\n")
    assert [kind for kind, _ in calls] == ["write", "writelines", "write"]


@on_both_loops
async def test_unparsable_bytes_are_answered_after_the_held_head() -> None:
    """A 400 for garbage sent behind a request whose answer has begun: the answer's head
    first, then the 400, then the connection closes."""
    started, gate = asyncio.Event(), asyncio.Event()

    async def slow_body(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"2")]})
        started.set()
        await gate.wait()
        await send({"type": "http.response.body", "body": b"ok"})

    async with serving(slow_body, OneWriteProtocol) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request())
        await asyncio.wait_for(started.wait(), READ_TIMEOUT_S)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        received = await asyncio.wait_for(reader.read(), READ_TIMEOUT_S)  # to EOF
        writer.close()
        gate.set()
    head, _, rest = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: 2" in head
    assert rest.startswith(b"HTTP/1.1 400 Bad Request\r\n")


class Recording:
    """Stands in for a transport: what reached it, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def write(self, data: bytes) -> None:
        self.calls.append(("write", data))

    def writelines(self, parts: Any) -> None:
        self.calls.append(("writelines", tuple(parts)))

    def close(self) -> None:
        self.calls.append(("close", None))

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def test_held_head_passes_the_rest_of_the_transport_through() -> None:
    recording = Recording()
    held = HeldHead(recording)  # type: ignore[arg-type]
    held.write(CONTINUE)
    held.write(b"HEAD")
    assert recording.calls == [("write", CONTINUE)]
    held.write(b"body")
    held.write(b"more")
    held.close()
    assert recording.calls == [("write", CONTINUE), ("writelines", (b"HEAD", b"body")),
                               ("write", b"more"), ("close", None)]
    assert held.is_closing() is False
    assert held.get_extra_info("peername") == "info:peername"


def test_the_protocol_is_named_for_uvicorn() -> None:
    from uvicorn.importer import import_from_string

    assert import_from_string(PROTOCOL) is OneWriteProtocol


def test_serve_runs_uvicorn_with_the_one_write_protocol(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from provider.cli import app

    for name in [n for n in os.environ if n.startswith("PROVIDER_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PROVIDER_ENV", "test")
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'provider.db'}")
    monkeypatch.setenv("PROVIDER_KEYS_DIR", str(tmp_path / "keys"))
    # serve sets this one with os.environ.setdefault: set here, monkeypatch restores it.
    monkeypatch.setenv("PROVIDER_PASSWORD_HASH_CONCURRENCY", "1")
    runner = CliRunner()
    assert runner.invoke(app, ["keys", "generate"]).exit_code == 0
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: calls.append(kwargs))
    result = runner.invoke(app, ["serve", "--port", "8123"])
    assert result.exit_code == 0, result.output
    [kwargs] = calls
    assert kwargs["http"] == PROTOCOL and kwargs["port"] == 8123
