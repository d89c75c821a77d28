"""Where a response was read: every request collects the sources of its reads
(pgjobs.replica), and a response with reads meant for the replica says where they ran
in its headers: `X-Read-From` (replica or primary), `X-Replica-Lag` (seconds, when
measured) and `X-Read-Note` (the line the dashboard shows in its banner)."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pgjobs.replica import observe_reads


class ReadSourceHeaders:
    """ASGI middleware adding the read-source headers to HTTP responses."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with observe_reads() as reads:

            async def send_with_source(message: Message) -> None:
                summary = reads.summary
                if message["type"] == "http.response.start" and summary is not None:
                    headers = MutableHeaders(scope=message)
                    for name, value in summary.headers().items():
                        headers[name] = value
                await send(message)

            await self.app(scope, receive, send_with_source)
