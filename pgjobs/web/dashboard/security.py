"""What keeps the dashboard's pages and actions safe.

- Every response carries a strict Content-Security-Policy (`default-src 'self'`, no
  inline script or style anywhere, `frame-ancestors 'none'`), `nosniff` and a
  same-origin referrer policy. Same-origin (not no-referrer) matters: under
  `no-referrer` browsers send `Origin: null` on form posts, which the check below
  would refuse.
- Every state-changing request is a POST whose form carries a CSRF token and whose
  Origin (or, without one, Referer) names this server: same scheme and port, a host
  of JOBS_ALLOWED_HOSTS (pgjobs.web.hosts checks this for every route; it is checked
  again here). The token is an HMAC, under JOBS_DASHBOARD_SECRET (or a random key per
  process), of the user name and a random per-browser secret kept in a cookie
  (`HttpOnly`, `SameSite=Strict`, `Secure` over https) that lasts the browser
  session: a token is worthless to another user, in another browser, or after the
  browser was closed. Read-only users are refused before any of that. All these
  refusals are 403.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import Response

from pgjobs.web.errors import HTTPError, UnsupportedMediaType
from pgjobs.web.hosts import origin_problem
from pgjobs.web.requests import read_body

FORM_LIMIT = 64 * 1024
FORM_TYPE = "application/x-www-form-urlencoded"
CSRF_COOKIE = "pgjobs_csrf"
BROWSER_SECRET = re.compile(r"[0-9a-f]{64}")


class Forbidden(HTTPError):
    status, code = 403, "forbidden"


class CsrfSigner:
    """Tokens bound to a user name and a browser secret: a token taken from one user's
    page, or from another browser, is worthless, and one made under another key
    (another deployment) is refused."""

    def __init__(self, secret: str | None) -> None:
        self._key = (secret or secrets.token_hex(32)).encode("utf-8")

    def token(self, user: str, browser: str) -> str:
        message = b"pgjobs-dashboard-csrf\x00%s\x00%s" % (
            user.encode("utf-8"),
            browser.encode("ascii"),
        )
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def valid(self, user: str, browser: str | None, token: str | None) -> bool:
        if browser is None or token is None:
            return False
        return hmac.compare_digest(token.encode("utf-8"), self.token(user, browser).encode("utf-8"))


def browser_secret(request: Request) -> str | None:
    """This browser's CSRF secret from its cookie, or None when it has none (or a
    malformed one)."""
    value = request.cookies.get(CSRF_COOKIE, "")
    return value if BROWSER_SECRET.fullmatch(value) else None


def new_browser_secret() -> str:
    return secrets.token_hex(32)


def set_browser_secret(response: Response, request: Request, secret: str, path: str) -> None:
    """The cookie lasts the browser session; the page that sets it carries its token."""
    response.set_cookie(
        CSRF_COOKIE,
        secret,
        path=path,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def user_of(request: Request) -> str:
    return str(getattr(request.state, "user", "anonymous"))


def read_only(request: Request) -> bool:
    return bool(getattr(request.state, "read_only", False))


def same_origin(request: Request, allowed: tuple[str, ...]) -> bool:
    """Whether the request's Origin (or Referer when a client sends no Origin) is this
    server: same scheme and port, an allowed host. A request with neither (not a
    browser) is let through: it still needs the CSRF token of a page only its user
    could read, and that user's cookie."""
    return origin_problem(request.scope, allowed) is None


async def read_fields(request: Request) -> dict[str, list[str]]:
    """The urlencoded body of a dashboard form, every value of each field."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != FORM_TYPE:
        raise UnsupportedMediaType(f"dashboard actions take {FORM_TYPE} forms")
    body = await read_body(request, FORM_LIMIT)
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise Forbidden("malformed form") from None
    return {name: values for name, values in fields.items() if values}


async def checked_form(
    request: Request, signer: CsrfSigner, allowed: tuple[str, ...]
) -> dict[str, str]:
    """The form of a state-changing request, after the role, origin and CSRF checks."""
    fields = await checked_fields(request, signer, allowed)
    return {name: values[0] for name, values in fields.items()}


async def checked_fields(
    request: Request, signer: CsrfSigner, allowed: tuple[str, ...]
) -> dict[str, list[str]]:
    """`checked_form` with every value of each field (a list of checked boxes)."""
    if read_only(request):
        raise Forbidden("read-only users cannot change anything")
    if not same_origin(request, allowed):
        raise Forbidden("cross-origin request refused")
    fields = await read_fields(request)
    token = fields.get("csrf", [None])[0]
    if not signer.valid(user_of(request), browser_secret(request), token):
        raise Forbidden("missing or invalid CSRF token: reload the page and try again")
    return fields
