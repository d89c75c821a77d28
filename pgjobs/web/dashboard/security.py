"""What keeps the dashboard's pages and actions safe.

- Every response carries a strict Content-Security-Policy (`default-src 'self'`, no
  inline script or style anywhere, `frame-ancestors 'none'`), `nosniff` and a
  same-origin referrer policy. Same-origin (not no-referrer) matters: under
  `no-referrer` browsers send `Origin: null` on form posts, which the check below
  would refuse.
- Every state-changing request is a POST whose form carries a CSRF token, an HMAC of
  the user name under JOBS_DASHBOARD_SECRET (or a random key per process), and whose
  Origin (or, without one, Referer) names this server. Read-only users are refused
  before any of that. Both refusals are 403.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import parse_qs, urlsplit

from starlette.requests import Request

from pgjobs.web.errors import HTTPError, PayloadTooLarge

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; "
        "object-src 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}
FORM_LIMIT = 64 * 1024
FORM_TYPE = "application/x-www-form-urlencoded"
_DEFAULT_PORTS = {"http": 80, "https": 443}


class Forbidden(HTTPError):
    status, code = 403, "forbidden"


class UnsupportedMediaType(HTTPError):
    status, code = 415, "unsupported_media_type"


class CsrfSigner:
    """Tokens bound to a user name: a token taken from one user's page is worthless to
    another, and one made under another key (another deployment) is refused."""

    def __init__(self, secret: str | None) -> None:
        self._key = (secret or secrets.token_hex(32)).encode("utf-8")

    def token(self, user: str) -> str:
        message = b"pgjobs-dashboard-csrf\x00" + user.encode("utf-8")
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def valid(self, user: str, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(
            token.encode("utf-8"), self.token(user).encode("utf-8")
        )


def user_of(request: Request) -> str:
    return str(getattr(request.state, "user", "anonymous"))


def read_only(request: Request) -> bool:
    return bool(getattr(request.state, "read_only", False))


def same_origin(request: Request) -> bool:
    """Whether the request's Origin (or Referer when a client sends no Origin) is this
    server, compared with the Host header. A request with neither (not a browser) is
    let through: it still needs the CSRF token of a page only its user could read."""
    claimed = request.headers.get("origin") or request.headers.get("referer")
    if claimed is None:
        return True
    if claimed.strip().lower() == "null":
        return False
    try:
        origin = urlsplit(claimed.strip())
        host = urlsplit("//" + request.headers.get("host", ""))
        if origin.scheme not in _DEFAULT_PORTS or not origin.hostname or not host.hostname:
            return False
        default = _DEFAULT_PORTS[origin.scheme]
        return (origin.hostname, origin.port or default) == (host.hostname, host.port or default)
    except ValueError:  # a malformed port
        return False


async def read_form(request: Request) -> dict[str, str]:
    """The urlencoded body of a dashboard form, first value of each field."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != FORM_TYPE:
        raise UnsupportedMediaType(f"dashboard actions take {FORM_TYPE} forms")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > FORM_LIMIT:
            raise PayloadTooLarge(f"form is over the limit of {FORM_LIMIT} bytes")
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise Forbidden("malformed form") from None
    return {name: values[0] for name, values in fields.items() if values}


async def checked_form(request: Request, signer: CsrfSigner) -> dict[str, str]:
    """The form of a state-changing request, after the role, origin and CSRF checks."""
    if read_only(request):
        raise Forbidden("read-only users cannot change anything")
    if not same_origin(request):
        raise Forbidden("cross-origin request refused")
    form = await read_form(request)
    if not signer.valid(user_of(request), form.get("csrf")):
        raise Forbidden("missing or invalid CSRF token: reload the page and try again")
    return form
