"""send-email against a real SMTP server (aiosmtpd): what arrives is parsed and checked."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgjobs import App, Discard, FrozenClock, Job
from pgjobs.config import load_settings
from pgjobs.errors import ValidationError
from pgjobs.types import send_email
from tests.conftest import make_settings
from tests.servers import SmtpRecorder, free_port, self_signed_cert, smtp_server
from tests.web_client import api_client

pytestmark = pytest.mark.anyio

SENDER = "Jobs <jobs@example.com>"


@pytest.fixture
def smtp() -> Iterator[SmtpRecorder]:
    with smtp_server() as recorder:
        yield recorder


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "welcome.subject").write_text("Welcome, {{ name }}!\n")
    (folder / "welcome.txt").write_text("Hello {{ name }}, your id is {{ userId }}.\n")
    (folder / "welcome.html").write_text("<p>Hello <b>{{ name }}</b>, id {{ userId }}</p>\n")
    return folder


@pytest.fixture
async def mail_app(
    db_url: str, smtp: SmtpRecorder, templates: Path, tmp_path: Path
) -> AsyncIterator[App]:
    files = tmp_path / "files"
    files.mkdir()
    settings = make_settings(
        db_url,
        JOBS_SMTP_URL=smtp.url,
        JOBS_SMTP_FROM=SENDER,
        JOBS_EMAIL_TEMPLATES_DIR=str(templates),
        JOBS_EMAIL_ATTACHMENT_ROOTS=str(files),
    )
    application = App(settings, clock=FrozenClock())
    try:
        yield application
    finally:
        await application.close()


async def run(app: App, payload: dict[str, Any], **options: Any) -> Job:
    job = await app.create("send-email", payload, **options)
    await app.drain()
    return await app.get(job.id)


async def test_plain_text_email(mail_app: App, smtp: SmtpRecorder) -> None:
    job = await run(mail_app, {"to": "user@example.com", "subject": "Test", "body": "Hello!\nBye."})
    assert job.status == "completed", job.last_error
    [got] = smtp.received
    msg = got.message
    assert got.mail_from == "jobs@example.com"
    assert got.rcpt_tos == ["user@example.com"]
    assert msg["From"] == SENDER
    assert msg["To"] == "user@example.com"
    assert msg["Subject"] == "Test"
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content().replace("\r\n", "\n") == "Hello!\nBye.\n"
    assert job.result == {
        "messageId": msg["Message-ID"],
        "accepted": ["user@example.com"],
        "rejected": {},
    }
    assert msg["Message-ID"].endswith("@example.com>")


async def test_html_email_has_a_text_alternative(mail_app: App, smtp: SmtpRecorder) -> None:
    job = await run(
        mail_app,
        {
            "to": ["a@example.com", "B <b@example.com>"],
            "subject": "[ALERT] Queue backlog",
            "body": "<h2>Jobs Plugin Alert</h2><p>Backlog &amp; more</p>",
            "isHtml": True,
        },
    )
    assert job.status == "completed", job.last_error
    msg = smtp.received[0].message
    assert msg.get_content_type() == "multipart/alternative"
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None and html is not None
    assert "<h2>Jobs Plugin Alert</h2>" in html.get_content()
    assert text.get_content().split() == ["Jobs", "Plugin", "Alert", "Backlog", "&", "more"]
    assert sorted(smtp.received[0].rcpt_tos) == ["a@example.com", "b@example.com"]


async def test_body_and_html_together(mail_app: App, smtp: SmtpRecorder) -> None:
    job = await run(
        mail_app,
        {"to": "u@example.com", "subject": "S", "body": "plain words", "html": "<i>rich</i>"},
    )
    assert job.status == "completed", job.last_error
    msg = smtp.received[0].message
    assert msg.get_body(("plain",)).get_content().strip() == "plain words"  # type: ignore[union-attr]
    assert msg.get_body(("html",)).get_content().strip() == "<i>rich</i>"  # type: ignore[union-attr]


async def test_template_renders_subject_text_and_escaped_html(
    mail_app: App, smtp: SmtpRecorder
) -> None:
    job = await run(
        mail_app,
        {
            "to": "ann@example.com",
            "template": "welcome",
            "data": {"name": "Ann <script>", "userId": 42},
        },
    )
    assert job.status == "completed", job.last_error
    msg = smtp.received[0].message
    assert msg["Subject"] == "Welcome, Ann <script>!"
    plain = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "Hello Ann <script>, your id is 42." in plain
    assert "<b>Ann &lt;script&gt;</b>, id 42" in html


async def test_template_with_missing_variable_is_discarded(
    mail_app: App, smtp: SmtpRecorder
) -> None:
    job = await run(mail_app, {"to": "a@example.com", "template": "welcome", "data": {}})
    assert job.status == "failed" and job.attempts == 1
    assert job.last_error is not None and "data: template welcome" in job.last_error
    assert "'name' is undefined" in job.last_error
    assert smtp.received == []


async def test_cc_and_bcc_bcc_never_in_headers(mail_app: App, smtp: SmtpRecorder) -> None:
    job = await run(
        mail_app,
        {
            "to": "to@example.com",
            "cc": ["cc1@example.com", "cc2@example.com"],
            "bcc": "secret@example.com",
            "replyTo": "support@example.com",
            "subject": "Copies",
            "body": "hi",
        },
    )
    assert job.status == "completed", job.last_error
    [got] = smtp.received
    assert sorted(got.rcpt_tos) == sorted(
        ["to@example.com", "cc1@example.com", "cc2@example.com", "secret@example.com"]
    )
    msg = got.message
    assert msg["Cc"] == "cc1@example.com, cc2@example.com"
    assert msg["Reply-To"] == "support@example.com"
    assert msg["Bcc"] is None
    assert b"secret@example.com" not in got.data
    assert "secret@example.com" in job.result["accepted"]


async def test_attachments_base64_and_path(
    mail_app: App, smtp: SmtpRecorder, tmp_path: Path
) -> None:
    report = tmp_path / "files" / "report.csv"
    report.write_bytes(b"id,total\n1,9.50\n")
    blob = bytes(range(256)) * 10
    job = await run(
        mail_app,
        {
            "to": "a@example.com",
            "subject": "Files",
            "body": "see attached",
            "attachments": [
                {
                    "filename": "data.bin",
                    "content": base64.b64encode(blob).decode(),
                    "contentType": "application/x-custom",
                },
                {"path": str(report)},
            ],
        },
    )
    assert job.status == "completed", job.last_error
    msg = smtp.received[0].message
    parts = list(msg.iter_attachments())
    assert [(a.get_filename(), a.get_content_type()) for a in parts] == [
        ("data.bin", "application/x-custom"),
        ("report.csv", "text/csv"),
    ]
    assert parts[0].get_payload(decode=True) == blob
    assert parts[1].get_payload(decode=True) == b"id,total\n1,9.50\n"
    assert msg.get_body(("plain",)).get_content().strip() == "see attached"  # type: ignore[union-attr]


async def test_attachment_path_outside_roots_is_refused(
    mail_app: App, smtp: SmtpRecorder, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("do not mail me")
    link = tmp_path / "files" / "innocent.txt"
    link.symlink_to(secret)
    for path, problem in [(secret, "is outside"), (link, "leads through a symlink")]:
        job = await run(
            mail_app,
            {
                "to": "a@example.com",
                "subject": "x",
                "body": "x",
                "attachments": [{"path": str(path)}],
            },
        )
        assert job.status == "failed" and job.attempts == 1
        assert job.last_error is not None and "attachments[0].path:" in job.last_error
        assert problem in job.last_error
    assert smtp.received == []


async def test_temporary_refusal_is_retried_then_delivered(
    mail_app: App, smtp: SmtpRecorder
) -> None:
    smtp.refuse["busy@example.com"] = "451 4.7.1 Greylisted, try again later"
    job = await run(mail_app, {"to": "busy@example.com", "subject": "Hi", "body": "x"})
    assert job.status == "delayed"
    assert job.last_error is not None and "451 4.7.1 Greylisted" in job.last_error
    assert smtp.received == []

    del smtp.refuse["busy@example.com"]
    assert isinstance(mail_app.clock, FrozenClock)
    mail_app.clock.advance(timedelta(minutes=1))
    await mail_app.drain()
    done = await mail_app.get(job.id)
    assert done.status == "completed" and done.attempts == 2
    assert len(smtp.received) == 1


async def test_permanent_refusal_is_discarded(mail_app: App, smtp: SmtpRecorder) -> None:
    smtp.refuse["nobody@example.com"] = "550 5.1.1 No such user"
    job = await run(
        mail_app, {"to": "nobody@example.com", "subject": "Hi", "body": "x"}, attempts=5
    )
    assert job.status == "failed" and job.attempts == 1
    assert job.failures[-1].kind == "discarded"
    assert "nobody@example.com (550 5.1.1 No such user)" in (job.last_error or "")


async def test_some_recipients_refused_is_reported_not_retried(
    mail_app: App, smtp: SmtpRecorder
) -> None:
    smtp.refuse["gone@example.com"] = "550 5.1.1 No such user"
    job = await run(
        mail_app, {"to": ["ok@example.com", "gone@example.com"], "subject": "Hi", "body": "x"}
    )
    assert job.status == "completed"
    assert job.result["accepted"] == ["ok@example.com"]
    assert job.result["rejected"] == {"gone@example.com": "550 5.1.1 No such user"}
    assert smtp.received[0].rcpt_tos == ["ok@example.com"]


async def test_connection_refused_is_retried(db_url: str) -> None:
    settings = make_settings(
        db_url, JOBS_SMTP_URL=f"smtp://127.0.0.1:{free_port()}", JOBS_SMTP_FROM=SENDER
    )
    async with App(settings, clock=FrozenClock()) as app:
        job = await run(app, {"to": "a@example.com", "subject": "x", "body": "x"})
    assert job.status == "delayed"
    assert job.failures[-1].kind == "error"
    assert "cannot deliver through 127.0.0.1" in (job.last_error or "")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"subject": "x", "body": "x"}, "to: required"),
        ({"to": "not-an-address", "subject": "x", "body": "x"}, "to: not an email address"),
        ({"to": "a@example.com", "body": "x"}, "subject: required"),
        ({"to": "a@example.com", "subject": "x"}, "body: required"),
        ({"to": "a@example.com", "subject": "x", "body": 3}, "body: must be a string"),
        ({"to": "a@example.com", "template": "nope"}, "template: no nope.html or nope.txt"),
        (
            {
                "to": "a@example.com",
                "subject": "x",
                "body": "x",
                "attachments": [{"filename": "a"}],
            },
            "attachments[0]: needs content (base64) or path",
        ),
        (
            {
                "to": "a@example.com",
                "subject": "x",
                "body": "x",
                "attachments": [{"filename": "a", "content": "!!"}],
            },
            "attachments[0].content: is not valid base64",
        ),
        ({"to": "a@example.com", "subject": "a\r\nBcc: x@y.z", "body": "x"}, "subject: must be"),
    ],
)
async def test_bad_payload_fails_at_once_naming_the_field(
    mail_app: App, smtp: SmtpRecorder, payload: Any, message: str
) -> None:
    job = await run(mail_app, payload, attempts=3)
    assert job.status == "failed" and job.attempts == 1
    assert job.failures[-1].kind == "discarded"
    assert (job.last_error or "").startswith(message) or message in (job.last_error or "")
    assert smtp.received == []


async def test_login_with_credentials_from_the_url(db_url: str) -> None:
    from aiosmtpd.smtp import AuthResult

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth: Any) -> Any:
        ok = auth.login == b"mailer" and auth.password == b"p@ss:word"
        return AuthResult(success=ok, handled=False)  # handled=False: reply 535

    with smtp_server(authenticator=authenticator, auth_require_tls=False) as recorder:
        url = f"smtp://mailer:p%40ss%3Aword@127.0.0.1:{recorder.port}"
        async with App(make_settings(db_url, JOBS_SMTP_URL=url, JOBS_SMTP_FROM=SENDER)) as app:
            job = await run(app, {"to": "a@example.com", "subject": "x", "body": "x"})
        assert job.status == "completed", job.last_error
        bad = url.replace("p%40ss", "wrong")
        async with App(make_settings(db_url, JOBS_SMTP_URL=bad, JOBS_SMTP_FROM=SENDER)) as app:
            job = await run(app, {"to": "a@example.com", "subject": "x", "body": "x"})
        assert job.status == "failed" and "535" in (job.last_error or "")
        assert len(recorder.received) == 1


@pytest.mark.parametrize("mode", ["smtps", "starttls"])
async def test_tls_implicit_and_starttls(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    tls = self_signed_cert(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(tls.cert))  # the client trusts our test CA
    options: dict[str, Any] = (
        {"ssl_context": tls.server_context()}
        if mode == "smtps"
        else {"tls_context": tls.server_context(), "require_starttls": True}
    )
    with smtp_server(**options) as recorder:
        url = (
            f"smtps://127.0.0.1:{recorder.port}"
            if mode == "smtps"
            else f"smtp://127.0.0.1:{recorder.port}?starttls=true"
        )
        async with App(make_settings(db_url, JOBS_SMTP_URL=url, JOBS_SMTP_FROM=SENDER)) as app:
            job = await run(app, {"to": "a@example.com", "subject": "tls", "body": "x"})
    assert job.status == "completed", job.last_error
    assert recorder.received[0].message["Subject"] == "tls"


# ---------------------------------------------------------------- pure parts


def test_smtp_url_forms() -> None:
    plain = send_email.smtp_server("smtp://u%40x:p%2Fw@mail.example.com:2525?starttls=true")
    assert (plain.host, plain.port, plain.starttls, plain.implicit_tls) == (
        "mail.example.com",
        2525,
        True,
        False,
    )
    assert (plain.username, plain.password) == ("u@x", "p/w")
    implicit = send_email.smtp_server("smtps://mail.example.com")
    assert (implicit.port, implicit.implicit_tls, implicit.starttls) == (465, True, False)
    assert send_email.smtp_server("smtp://localhost").port == 25


def test_message_never_names_bcc_and_lists_envelope_once() -> None:
    settings = load_settings({"JOBS_SMTP_FROM": SENDER}, env_file=None)
    email, message = send_email.prepare(
        {
            "to": "a@example.com, b@example.com",
            "cc": "a@example.com",
            "bcc": ["hidden@example.com"],
            "subject": "s",
            "body": "b",
        },
        settings,
    )
    assert email.recipients == ["a@example.com", "b@example.com", "hidden@example.com"]
    assert "hidden" not in message.as_string()


def test_sender_required_without_default() -> None:
    settings = load_settings({}, env_file=None)
    with pytest.raises(Discard, match=r"^from: required \(or set JOBS_SMTP_FROM\)"):
        send_email.parse({"to": "a@example.com", "subject": "s", "body": "b"}, settings)


def test_html_to_text_drops_markup_and_scripts() -> None:
    html = "<style>p{}</style><h1>Title</h1><p>One &amp; two</p><script>x()</script><br>End"
    assert send_email.html_to_text(html) == "Title\nOne & two\nEnd\n"


# ---------------------------------------------------------------- header injection

INJECTED_NAME = "X-A: 1\r\nReply-To: attacker@evil.example\r\nFrom: boss@example.com\r\n\r\nX-B"
HOSTILE_HEADERS = [
    ({INJECTED_NAME: "v"}, "is not a header name"),
    ({"X-A:\nReply-To: attacker@evil.example\nX-B": "v"}, "is not a header name"),
    ({"X-A B": "v"}, "is not a header name"),
    ({"Reply-To": "attacker@evil.example"}, "only X- headers may be added"),
    ({"From": "boss@example.com"}, "only X- headers may be added"),
    ({"bcc": "spy@evil.example"}, "only X- headers may be added"),
    ({"Content-Type": "text/html"}, "only X- headers may be added"),
    ({"MIME-Version": "2.0"}, "only X- headers may be added"),
    ({"X-Note": "a\u2028Reply-To: attacker@evil.example"}, "must be one line"),
    ({"X-Note": "a\x0bReply-To: attacker@evil.example"}, "must be one line"),
]


@pytest.mark.parametrize(("headers", "problem"), HOSTILE_HEADERS)
async def test_hostile_header_written_by_sql_is_discarded_unsent(
    mail_app: App, smtp: SmtpRecorder, db_url: str, headers: dict[str, str], problem: str
) -> None:
    """A producer role's row skips create-time checks: the handler refuses it."""
    payload = {"to": "user@example.com", "subject": "Hi", "body": "text", "headers": headers}
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("SET ROLE pgjobs_producer")
        row = conn.execute(
            "SELECT id FROM pgjobs_enqueue('send-email', %s)", (json.dumps(payload),)
        ).fetchone()
    assert row is not None
    await mail_app.drain()
    job = await mail_app.get(row[0])
    assert job.status == "failed" and job.attempts == 1, job.last_error
    assert job.failures[-1].kind == "discarded"
    assert f"headers.{next(iter(headers))!r}: {problem}" in (job.last_error or "")
    assert smtp.received == []


@pytest.mark.parametrize(("headers", "problem"), HOSTILE_HEADERS)
async def test_hostile_header_is_refused_when_the_job_is_created(
    mail_app: App, db_url: str, headers: dict[str, str], problem: str
) -> None:
    payload = {"to": "user@example.com", "subject": "Hi", "body": "text", "headers": headers}
    with pytest.raises(ValidationError, match=problem):
        await mail_app.create("send-email", payload)
    async with api_client(mail_app.settings) as client:
        one = await client.post("/api/jobs", json={"type": "send-email", "payload": payload})
        bulk = await client.post(
            "/api/jobs/bulk", json={"jobs": [{"type": "send-email", "payload": payload}]}
        )
    # 422 invalid_request, as for any invalid job; only the bulk one names its index.
    for response, prefix in ((one, "payload.headers."), (bulk, "job 0: payload.headers.")):
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "invalid_request"
        assert error["message"].startswith(prefix), error
        assert problem in error["message"]
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (0,)


async def test_added_x_headers_arrive_and_nothing_else(mail_app: App, smtp: SmtpRecorder) -> None:
    job = await run(
        mail_app,
        {
            "to": "user@example.com",
            "subject": "Hi",
            "body": "text",
            "headers": {"X-Campaign": "spring", "X-Tags": "a\tb"},
        },
    )
    assert job.status == "completed", job.last_error
    [got] = smtp.received
    msg = got.message
    assert msg["X-Campaign"] == "spring"
    assert msg.get_all("From") == [SENDER]
    assert "Reply-To" not in msg
