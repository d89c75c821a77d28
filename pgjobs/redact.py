"""Secrets kept out of what people read: API responses, dashboard pages, log lines and
the repr of Settings. Workers and handlers always get the real values; only what is
shown is masked.

Two kinds of secret are recognised: the password of a URL's userinfo
(`https://user:pass@host` -> `https://user:***@host`) and the value of a key that names
a secret (password, passwd, secret, token, api_key, apikey, authorization, access_key,
private_key, ... in any letter case: `is_secret_key`). Such a key is found at any depth
of a payload and, in free text, as a URL query parameter (`?access_token=...`), a
`KEY=VALUE` or `KEY: VALUE` pair (libpq's `host=db password=...`, `PGPASSWORD=...`,
`passwd: ...`), a JSON member or a Python dict's repr; a bearer token
(`Authorization: Bearer ...`, `Bearer ...`) is masked too.

Every pattern here has bounded repetitions or a single unbounded run with nothing to
backtrack into, so masking stays linear in the length of the text.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from typing import Any

MASK = "***"
SECRET_KEY = re.compile(
    r"passw(or)?d|pass(phrase)?$|^pwd$|token|secret|authori[sz]ation|api[-_ ]?key|"
    r"access[-_ ]?key|private[-_ ]?key|credential|cookie",
    re.IGNORECASE,
)
# scheme://user:password@ — the password may hold '/' and '@' and runs to the last @
# before a space, quote, '?' or '#'. The lengths are bounded so that each "://" costs a bounded
# amount of work whatever follows it.
_URL_PASSWORD = re.compile(
    r"([a-zA-Z][a-zA-Z0-9+.-]{0,31}://[^/?#@\s:]{0,256}:)[^?#\s'\"<>]{0,1024}@"
)
# The start of a key=value pair (query parameter, libpq keyword, environment variable)
# or of a "key: value" pair: the key stands alone (not the tail of a longer word). The
# value is read only after a secret key, so that a pair whose value holds another
# (`url=https://h/?token=...`) is searched on inside.
_PAIR_KEY = re.compile(
    r"(?<![\w.-])([A-Za-z_][\w.-]{0,63})([ \t]*:(?!//)[ \t]*|=)"
    r"((?:bearer|basic|digest|token)[ \t]+)?",
    re.IGNORECASE,
)
# The value: quoted, or running to a space, quote or '&' (a query string's next
# parameter). It never crosses a line, so stack traces keep their shape.
_PAIR_VALUE = re.compile(r"'(?:[^'\\\n]|\\.){0,1024}'|\"(?:[^\"\\\n]|\\.){0,1024}\"|[^\s'\"&]+")
# "InvalidTokenError: ..." is an exception, not a key and its value.
_EXCEPTION_NAME = re.compile(r"(Error|Exception|Warning)$")
# A bearer token on its own (an Authorization header's value in a message).
_BEARER = re.compile(r"\b(bearer[ \t]+)[A-Za-z0-9._~+/-]+=*", re.IGNORECASE)
# A JSON object key followed by its colon, in possibly truncated JSON text.
_JSON_KEY = re.compile(r'"((?:[^"\\]|\\.)*)"\s*:\s*')
_JSON_STRING_REST = re.compile(r'"(?:[^"\\]|\\.)*("|$)')
_JSON_SCALAR = re.compile(r"-?[0-9][0-9.eE+-]*|true|false|null")
# 'key': 'value' as Python's repr of a dict writes it (in log lines).
_REPR_PAIR = re.compile(r"""(['"])([^'"]{1,100})\1(\s*[:=]\s*)(['"])((?:(?!\4).)*)\4""")


def is_secret_key(key: str) -> bool:
    return bool(SECRET_KEY.search(key.strip()))


def mask_urls(text: str) -> str:
    """`text` with the password of every URL in it masked, and every secret-looking
    `key=value` or `key: value` pair (such as a query parameter) and bearer token."""
    if "://" in text:
        text = _URL_PASSWORD.sub(r"\1" + MASK + "@", text)
    if "=" in text or ":" in text:
        text = _mask_pairs(text)
    if "earer" in text or "EARER" in text:
        text = _BEARER.sub(r"\1" + MASK, text)
    return text


def _mask_pairs(text: str) -> str:
    out: list[str] = []
    pos = 0
    while (match := _PAIR_KEY.search(text, pos)) is not None:
        key, sep = match.group(1, 2)
        secret = is_secret_key(key) and not (sep.strip() == ":" and _EXCEPTION_NAME.search(key))
        value = _PAIR_VALUE.match(text, match.end()) if secret else None
        if value is None or value.group(0).strip("'\"") == MASK:
            out.append(text[pos : match.end()])
            pos = match.end()
            continue
        quote = value.group(0)[0]
        quoted = quote in "'\"" and len(value.group(0)) > 1
        out.append(text[pos : match.end()])
        out.append(f"{quote}{MASK}{quote}" if quoted else MASK)
        pos = value.end()
    out.append(text[pos:])
    return "".join(out)


def mask_secrets(value: Any, key_mask: str = MASK) -> Any:
    """A copy of `value`: every secret key's value replaced by `key_mask`, and the
    secrets in every string (see mask_text) by MASK."""
    if isinstance(value, Mapping):
        return {
            k: key_mask if is_secret_key(str(k)) else mask_secrets(v, key_mask)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [mask_secrets(v, key_mask) for v in value]
    if isinstance(value, str):
        return mask_text(value)
    return value


def mask_json_text(text: str, key_mask: str = MASK) -> str:
    """Mask secrets in JSON text that may be cut anywhere (a preview): a string or
    scalar value of a secret key is replaced; an object or array value ends the text
    there, since its end may not be in it. URL passwords are masked too."""
    out: list[str] = []
    pos = 0
    for match in _JSON_KEY.finditer(text):
        if match.start() < pos or not is_secret_key(_unescape(match.group(1))):
            continue
        out.append(text[pos : match.end()])
        rest = text[match.end() :]
        if rest.startswith("{") or rest.startswith("["):
            out.append(key_mask + "…")
            return mask_urls("".join(out))
        value = _JSON_STRING_REST.match(rest) or _JSON_SCALAR.match(rest)
        out.append(f'"{key_mask}"')
        pos = match.end() + (value.end() if value else 0)
    out.append(text[pos:])
    return mask_urls("".join(out))


def mask_text(text: str) -> str:
    """Free text (an error message, a stack trace, a log line): URL passwords, bearer
    tokens, and values of secret keys written as JSON, as a Python dict's repr, as
    `key=value` or as `key: value`. Lines are kept: nothing masked spans two."""

    def pair(match: re.Match[str]) -> str:
        if not is_secret_key(match.group(2)):
            return match.group(0)
        key_quote, key, sep, quote = match.group(1, 2, 3, 4)
        return f"{key_quote}{key}{key_quote}{sep}{quote}{MASK}{quote}"

    return mask_urls(_REPR_PAIR.sub(pair, text))


def _unescape(key: str) -> str:
    try:
        decoded = json.loads(f'"{key}"')
    except ValueError:
        return key
    return decoded if isinstance(decoded, str) else key


class SecretsFilter(logging.Filter):
    """Masks secrets in every record of the logger it is attached to. The arguments
    are masked one by one, keeping their shape: formatters such as uvicorn's access
    log unpack them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = mask_text(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_masked_arg(a) for a in record.args)
        elif isinstance(record.args, Mapping):
            record.args = {k: _masked_arg(v) for k, v in record.args.items()}
        return True


def _masked_arg(value: Any) -> Any:
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, int | float | bool) or value is None:
        return value
    shown = str(value)
    masked = mask_text(shown)
    return value if masked == shown else masked


def filter_loggers(*names: str) -> None:
    """Attach one SecretsFilter to each named logger (once)."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, SecretsFilter) for f in logger.filters):
            logger.addFilter(SecretsFilter())
