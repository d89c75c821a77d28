"""Parsing the network settings: origins (`JOBS_CUSTOM_ACTION_ORIGINS`, the dashboard's
allowed origins) and egress rules (`JOBS_HTTP_ALLOW`, `JOBS_HTTP_DENY`).

It sits with the settings, below the job types: loading settings validates these with
the same parsers the `http-request` and `custom` types apply at run time, without
importing the types (or httpx).
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_HOST = re.compile(r"(\*\.)?[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")


def parse_rules(raw: str) -> tuple[str, ...]:
    """A comma-separated list of host names, `*.domain`s, IPs and CIDRs (for config)."""
    entries = tuple(e.strip().lower().rstrip(".") for e in raw.split(",") if e.strip())
    for entry in entries:
        if network_of(entry) is None and not _HOST.fullmatch(entry):
            raise ValueError(
                "a comma-separated list of host names, *.domain, IP addresses and CIDRs "
                f"like 10.0.0.0/8 ({entry!r} is none of those)"
            )
    return entries


def network_of(entry: str) -> Network | None:
    """`entry` as an IP network (an address is a /32 or /128), or None."""
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return None


def address_of(host: str) -> Address | None:
    """`host` as an IP address (IPv4-mapped IPv6 as IPv4), or None for a name."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return mapped or address


def origin_of(url: str) -> str | None:
    """`http(s)://host:port` of `url`, or None when it is not an http(s) URL."""
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    port = port or (443 if scheme == "https" else 80)
    host = parts.hostname.lower().rstrip(".")
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"
