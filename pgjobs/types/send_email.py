"""`send-email`: one message over SMTP (settings `JOBS_SMTP_URL`, `JOBS_SMTP_FROM`).

The payload is checked and the message built before any connection is made, so a bad
payload fails at once. Delivery uses the standard library's smtplib in a worker thread:
one message per job makes a connection per job, which smtplib handles well, and it
needs no extra dependency. SMTP replies decide the outcome: 4xx and network failures
are temporary (the job is retried), 5xx are permanent (`Discard`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import mimetypes
import smtplib
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate, getaddresses, make_msgid
from html.parser import HTMLParser
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from pgjobs.errors import Discard
from pgjobs.types import payload as p
from pgjobs.types.mail_headers import header_problem
from pgjobs.types.paths import confine

if TYPE_CHECKING:
    from pgjobs.config import Settings
    from pgjobs.context import JobContext

TYPE = "send-email"
KNOWN_FIELDS = frozenset(
    {
        "to",
        "cc",
        "bcc",
        "from",
        "replyTo",
        "subject",
        "body",
        "text",
        "html",
        "isHtml",
        "template",
        "data",
        "attachments",
        "headers",
    }
)
SMTP_TIMEOUT_S = 30.0


class SmtpTemporaryError(Exception):
    """The server or the network failed in a way worth retrying."""


@dataclass(frozen=True, slots=True)
class SmtpServer:
    host: str
    port: int
    implicit_tls: bool
    starttls: bool
    username: str | None
    password: str | None
    timeout: float = SMTP_TIMEOUT_S


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    content: bytes
    content_type: str


@dataclass(frozen=True, slots=True)
class Email:
    sender: str
    to: list[str]
    cc: list[str] = field(default_factory=list)
    bcc: list[str] = field(default_factory=list)
    reply_to: list[str] = field(default_factory=list)
    subject: str = ""
    text: str | None = None
    html: str | None = None
    attachments: list[Attachment] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def envelope_sender(self) -> str:
        return getaddresses([self.sender])[0][1]

    @property
    def recipients(self) -> list[str]:
        """Every envelope recipient, BCC included, each once."""
        seen: dict[str, None] = {}
        for entry in (*self.to, *self.cc, *self.bcc):
            seen.setdefault(getaddresses([entry])[0][1], None)
        return list(seen)


def smtp_server(url: str) -> SmtpServer:
    """`smtp://user:pass@host:port` (`?starttls=true`), or `smtps://` for implicit TLS."""
    parts = urlsplit(url)
    query = {k: v[-1].lower() for k, v in parse_qs(parts.query).items()}
    implicit = parts.scheme == "smtps"
    return SmtpServer(
        host=parts.hostname or "localhost",
        port=parts.port or (465 if implicit else 25),
        implicit_tls=implicit,
        starttls=not implicit and query.get("starttls", "false") in ("1", "true", "yes"),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        timeout=float(query["timeout"]) if query.get("timeout", "").isdigit() else SMTP_TIMEOUT_S,
    )


# ---------------------------------------------------------------- payload -> Email


def parse(payload: Any, settings: Settings) -> Email:
    """Validate `payload` and render its template; `Discard` names the bad field."""
    data = p.as_object(payload)
    sender = p.text(data, "from", settings.smtp_from)
    if sender is None:
        raise p.bad("from", "required (or set JOBS_SMTP_FROM)")
    sender = _addresses("from", [sender])[0]
    to = _addresses("to", p.addresses(data, "to", required=True))
    cc = _addresses("cc", p.addresses(data, "cc"))
    bcc = _addresses("bcc", p.addresses(data, "bcc"))
    reply_to = _addresses("replyTo", p.addresses(data, "replyTo"))
    subject = p.text(data, "subject", None)
    text = _optional_str(data, "body") or _optional_str(data, "text")
    html = _optional_str(data, "html")
    if p.flag(data, "isHtml") and text is not None and html is None:
        text, html = None, text
    template = p.text(data, "template", None)
    if template is not None:
        rendered_subject, rendered_text, rendered_html = render_template(
            template, data.get("data"), settings
        )
        subject = subject or rendered_subject
        text = text or rendered_text
        html = html or rendered_html
    if not subject:
        raise p.bad("subject", "required (in the payload, or as the template's NAME.subject)")
    if "\r" in subject or "\n" in subject:
        raise p.bad("subject", "must be one line")
    if text is None and html is None:
        raise p.bad("body", "required: give body, html or a template")
    if text is None and html is not None:
        text = html_to_text(html)
    headers = p.string_map(data, "headers")
    for name, value in headers.items():
        problem = header_problem(name, value)
        if problem is not None:
            raise p.bad(f"headers.{name!r}", problem)
    return Email(
        sender=sender,
        to=to,
        cc=cc,
        bcc=bcc,
        reply_to=reply_to,
        subject=subject,
        text=text,
        html=html,
        attachments=_attachments(data.get("attachments"), settings),
        headers=headers,
    )


def _optional_str(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise p.bad(name, "must be a string")
    return value


def _addresses(name: str, entries: list[str]) -> list[str]:
    out: list[str] = []
    for index, entry in enumerate(entries):
        where = name if len(entries) == 1 else f"{name}[{index}]"
        if "\r" in entry or "\n" in entry:
            raise p.bad(where, "must be one line")
        # One entry may itself list several addresses: "a@x.org, B <b@y.org>".
        found = [(n, a) for n, a in getaddresses([entry]) if a]
        if not found or any("@" not in a or " " in a for _, a in found):
            raise p.bad(where, f"not an email address: {entry!r}")
        out.extend(f"{n} <{a}>" if n else a for n, a in found)
    return out


def render_template(
    name: str, values: Any, settings: Settings
) -> tuple[str | None, str | None, str | None]:
    """(subject, text, html) from `NAME.subject`, `NAME.txt` and `NAME.html`."""
    # Function-level: jinja2 is loaded only by senders that use templates.
    import jinja2

    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise p.bad("data", "must be an object")
    if not settings.email_templates_dir:
        raise p.bad("template", "JOBS_EMAIL_TEMPLATES_DIR is not set")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(settings.email_templates_dir),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    rendered: dict[str, str | None] = {}
    for suffix in ("subject", "txt", "html"):
        try:
            rendered[suffix] = env.get_template(f"{name}.{suffix}").render(values)
        except jinja2.TemplateNotFound:
            rendered[suffix] = None
        except jinja2.UndefinedError as exc:
            raise p.bad("data", f"template {name}.{suffix}: {exc}") from None
        except jinja2.TemplateError as exc:
            raise p.bad("template", f"{name}.{suffix} cannot be rendered: {exc}") from None
    if rendered["txt"] is None and rendered["html"] is None:
        raise p.bad(
            "template",
            f"no {name}.html or {name}.txt in {settings.email_templates_dir}",
        )
    subject = rendered["subject"]
    return (subject.strip() if subject else None), rendered["txt"], rendered["html"]


def _attachments(value: Any, settings: Settings) -> list[Attachment]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise p.bad("attachments", "must be a list")
    out: list[Attachment] = []
    for index, item in enumerate(value):
        where = f"attachments[{index}]"
        if not isinstance(item, dict):
            raise p.bad(where, "must be an object with filename and content or path")
        filename = p.text(item, "filename", None)
        content_type = p.text(item, "contentType", None)
        if "content" in item and "path" in item:
            raise p.bad(where, "give either content (base64) or path, not both")
        if item.get("content") is not None:
            raw = item["content"]
            if not isinstance(raw, str):
                raise p.bad(f"{where}.content", "must be a base64 string")
            try:
                content = base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError):
                raise p.bad(f"{where}.content", "is not valid base64") from None
        elif item.get("path") is not None:
            path = confine(
                p.text(item, "path"),
                settings.email_attachment_roots,
                field=f"{where}.path",
                setting="JOBS_EMAIL_ATTACHMENT_ROOTS",
            )
            if not path.is_file():
                raise p.bad(f"{where}.path", f"no such file: {path}")
            content = path.read_bytes()
            filename = filename or path.name
        else:
            raise p.bad(where, "needs content (base64) or path")
        if not filename:
            raise p.bad(f"{where}.filename", "required")
        if any(c in filename for c in "\r\n/\\"):
            raise p.bad(f"{where}.filename", "must be a plain file name")
        if content_type is None:
            content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        if content_type.count("/") != 1:
            raise p.bad(f"{where}.contentType", f"not a MIME type: {content_type!r}")
        out.append(Attachment(filename, content, content_type))
    return out


class _TextExtractor(HTMLParser):
    _BLOCKS = frozenset(
        {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "table"}
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip = max(0, self._skip - 1)
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(" ".join(data.split()) if data.strip() else "")


def html_to_text(html: str) -> str:
    """A readable plain-text alternative, so HTML-only mail still has one."""
    extractor = _TextExtractor()
    extractor.feed(html)
    extractor.close()
    lines = (line.strip() for line in "".join(extractor.parts).splitlines())
    text = "\n".join(line for line in lines if line)
    return text + "\n"


# ---------------------------------------------------------------- Email -> MIME


def build_message(email: Email) -> EmailMessage:
    """The MIME message. BCC recipients are only envelope recipients: no header names them."""
    message = EmailMessage(policy=SMTP_POLICY)
    message["From"] = email.sender
    message["To"] = ", ".join(email.to)
    if email.cc:
        message["Cc"] = ", ".join(email.cc)
    if email.reply_to:
        message["Reply-To"] = ", ".join(email.reply_to)
    message["Subject"] = email.subject
    message["Date"] = formatdate(localtime=False, usegmt=True)
    domain = email.envelope_sender.rpartition("@")[2] or None
    message["Message-ID"] = make_msgid(domain=domain)
    for name, value in email.headers.items():
        message[name] = value
    message.set_content(email.text or "")
    if email.html is not None:
        message.add_alternative(email.html, subtype="html")
    for attachment in email.attachments:
        maintype, _, subtype = attachment.content_type.partition("/")
        message.add_attachment(
            attachment.content,
            maintype=maintype,
            subtype=subtype,
            filename=attachment.filename,
        )
    return message


# ---------------------------------------------------------------- delivery


def deliver(
    server: SmtpServer, message: EmailMessage, sender: str, recipients: list[str]
) -> dict[str, str]:
    """Send `message`; return the recipients the server refused (others accepted it).

    Raises `Discard` for permanent failures and `SmtpTemporaryError` for the rest.
    """
    try:
        return _send(server, message, sender, recipients)
    except smtplib.SMTPRecipientsRefused as exc:
        refused = {addr: _reply(code, text) for addr, (code, text) in exc.recipients.items()}
        detail = "; ".join(f"{addr} ({reply})" for addr, reply in refused.items())
        if any(400 <= code < 500 for code, _ in exc.recipients.values()):
            raise SmtpTemporaryError(f"recipients temporarily refused: {detail}") from None
        raise Discard(f"to: every recipient was refused: {detail}") from None
    except smtplib.SMTPResponseException as exc:
        reply = _reply(exc.smtp_code, exc.smtp_error)
        stage = "sender refused" if isinstance(exc, smtplib.SMTPSenderRefused) else "SMTP error"
        if 500 <= exc.smtp_code < 600:
            raise Discard(f"{stage}: {reply}") from None
        raise SmtpTemporaryError(f"{stage}: {reply}") from None
    except smtplib.SMTPNotSupportedError as exc:
        raise Discard(f"SMTP server at {server.host}:{server.port}: {exc}") from None
    except ssl.SSLCertVerificationError as exc:
        raise Discard(
            f"TLS certificate of {server.host} not trusted: {exc.verify_message}"
        ) from None
    except (OSError, smtplib.SMTPException) as exc:
        reason = str(exc) or type(exc).__name__
        raise SmtpTemporaryError(
            f"cannot deliver through {server.host}:{server.port}: {reason}"
        ) from None


def _send(
    server: SmtpServer, message: EmailMessage, sender: str, recipients: list[str]
) -> dict[str, str]:
    context = ssl.create_default_context()
    smtp: smtplib.SMTP
    if server.implicit_tls:
        smtp = smtplib.SMTP_SSL(server.host, server.port, timeout=server.timeout, context=context)
    else:
        smtp = smtplib.SMTP(server.host, server.port, timeout=server.timeout)
    with smtp:
        smtp.ehlo()
        if server.starttls:
            smtp.starttls(context=context)
            smtp.ehlo()
        if server.username:
            smtp.login(server.username, server.password or "")
        refused = smtp.send_message(message, from_addr=sender, to_addrs=recipients)
    return {addr: _reply(code, text) for addr, (code, text) in refused.items()}


def _reply(code: int, text: bytes | str) -> str:
    message = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return f"{code} {' '.join(message.split())}"


# ---------------------------------------------------------------- handler


def prepare(payload: Any, settings: Settings) -> tuple[Email, EmailMessage]:
    email = parse(payload, settings)
    return email, build_message(email)


async def handle(ctx: JobContext, payload: Any) -> dict[str, Any]:
    settings = ctx.app.settings
    unknown = p.unknown_fields(p.as_object(payload), KNOWN_FIELDS)
    if unknown:
        ctx.logger.warning("send-email ignores unknown payload fields: %s", ", ".join(unknown))
    # Templates and attachment files are read from disk: off the event loop.
    email, message = await asyncio.to_thread(prepare, payload, settings)
    if not settings.smtp_url:
        raise Discard("JOBS_SMTP_URL is not set: the worker has no SMTP server to send through")
    server = smtp_server(settings.smtp_url)
    recipients = email.recipients
    refused = await asyncio.to_thread(deliver, server, message, email.envelope_sender, recipients)
    return {
        "messageId": message["Message-ID"],
        "accepted": [r for r in recipients if r not in refused],
        "rejected": refused,
    }
