"""Local stand-ins for the services the built-in job types talk to, for `pgjobs demo`:
an SMTP server that accepts every message (send-email) and a Hasura-style action
endpoint that answers every call (custom). Both listen on 127.0.0.1 only, run in
threads of the demo's own process and report what they receive through `echo`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import threading
from collections.abc import Callable
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pgjobs.dev.services import free_port

Echo = Callable[[str], None]
MAX_ACTION_BODY = 1024 * 1024


def smtp_sink_available() -> bool:
    """aiosmtpd ships with the `embedded` and `dev` extras."""
    return importlib.util.find_spec("aiosmtpd") is not None


class MailRecorder:
    """aiosmtpd handler: accepts every message, keeps a copy in `mailbox` and reports
    one line per message (envelope sender, recipients, subject)."""

    def __init__(self, mailbox: Path, echo: Echo) -> None:
        self.mailbox = mailbox
        self.echo = echo
        self.count = 0
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = bytes(envelope.content)
        headers = BytesHeaderParser(policy=default_policy).parsebytes(content)
        with self._lock:
            self.count += 1
            path = self.mailbox / f"{self.count:04d}.eml"
        # The demo's mail is for looking at: a failure to keep a copy is not the sender's.
        with contextlib.suppress(OSError):
            self.mailbox.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        self.echo(
            f"mail: from={envelope.mail_from} to={','.join(envelope.rcpt_tos)} "
            f"subject={headers.get('Subject', '')!r}"
        )
        return "250 Message accepted for delivery"


class SmtpSink:
    def __init__(self, mailbox: Path, echo: Echo) -> None:
        self.recorder = MailRecorder(mailbox, echo)
        self.port = free_port()
        self._controller: Any = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> SmtpSink:
        # Function-level: aiosmtpd is optional (the embedded and dev extras).
        from aiosmtpd.controller import Controller

        self._controller = Controller(self.recorder, hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


class _ActionHandler(BaseHTTPRequestHandler):
    server: _ActionServer

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            if length > MAX_ACTION_BODY:
                raise ValueError("body too large")
            body = json.loads(self.rfile.read(length) or b"{}")
            name = str(body.get("action", {}).get("name", ""))
            arguments = body.get("input")
        except (ValueError, AttributeError):
            self._answer(400, {"message": "expected a Hasura action call (JSON)"})
            return
        self.server.echo(f"action: {name} input={json.dumps(arguments)[:200]}")
        self._answer(200, {"ok": True, "action": name, "input": arguments})

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one `action:` line per call is reported instead


class _ActionServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, echo: Echo) -> None:
        super().__init__(("127.0.0.1", 0), _ActionHandler)
        self.echo = echo


class ActionEndpoint:
    """Answers every POST like a Hasura action handler that succeeds: 200 with the
    action's name and input echoed back."""

    def __init__(self, echo: Echo) -> None:
        self._server = _ActionServer(echo)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="pgjobs-demo-actions", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/actions"

    def start(self) -> ActionEndpoint:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
