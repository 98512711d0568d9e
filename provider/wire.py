"""How the server puts an answer on the wire: its head and its body in one send.

uvicorn's HTTP protocol (httptools) writes a response's status line and headers when the
app sends ``http.response.start``, and its body with a second write: two ``send()``
calls, two TCP segments and two wake-ups of the client, for answers (a token, the JWKS)
that fit in one. ``OneWriteProtocol`` holds the head back until the body's first write
and sends both with one ``writelines()``, as node's http module does for
``res.end(body)``. Everything else is uvicorn's: parsing, keep-alive, flow control,
pipelining, timeouts.

The head is never held past the moment uvicorn has nothing more to send:
- a HEAD request, whose answer has no body write, is not held at all;
- ``100 Continue`` (written while the app reads the body) is sent at once;
- a response that stops after its head (the app failed, the client left) ends with
  uvicorn closing the transport, which sends the head first;
- a 400 for unparsable bytes that follow a request on the same connection goes after
  that request's head.

The price: an answer streamed in parts sends nothing, not even its head, until its first
part is ready. Ours are whole but for the API docs' static files, whose first part is a
read from disk.

``provider serve`` runs with it (``uvicorn.run(http=...)``); it is not an ASGI layer, so
an app mounted elsewhere gets uvicorn's own.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
PROTOCOL = "provider.wire:OneWriteProtocol"  # for uvicorn.run(http=...)


class HeldHead:
    """The connection's transport as one request's response cycle sees it: the cycle's
    first write other than ``100 Continue`` is its head, and goes out with the next."""

    __slots__ = ("_fresh", "_head", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head: bytes | None = None
        self._fresh = True

    def write(self, data: bytes) -> None:
        head = self._head
        if head is not None:
            self._head = None
            if data:
                self._transport.writelines((head, data))
            else:  # an empty body (a 204, a redirect): never an empty buffer in
                # writelines, which CPython's selector transport keeps for ever from 3.12
                # (python/cpython#155888)
                self._transport.write(head)
        elif self._fresh and data != CONTINUE:
            self._fresh = False
            self._head = data
        else:
            self._transport.write(data)

    def flush(self) -> None:
        head = self._head
        if head is not None:
            self._head = None
            self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        # Anything else a cycle might ask of its transport is the connection's own.
        return getattr(self._transport, name)


class OneWriteProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, each response cycle writing through a HeldHead."""

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers bytes it cannot parse on the connection's own transport, and
        # closes it: a head held for the answer in progress goes first, as it would have.
        held = getattr(self.cycle, "transport", None)
        if isinstance(held, HeldHead):
            held.flush()
        super().send_400_response(msg)

    def on_headers_complete(self) -> None:
        previous = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        # A new cycle (not an upgrade) is created here and its task has not run yet.
        if cycle is not previous and self.scope["method"] != "HEAD":
            cycle.transport = HeldHead(self.transport)  # type: ignore[assignment]
