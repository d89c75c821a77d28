"""Where the `http-request` (and `custom`) job types may connect: the egress policy.

A payload's URL is chosen by whoever may create jobs, so without a policy the worker is
a relay into its own network (cloud metadata, admin ports, the database's neighbours).
The rules, checked for every hop of a redirect chain and after DNS resolution:

1. `JOBS_HTTP_DENY` (hosts, `*.domain`, IPs, CIDRs) is always refused.
2. Link-local addresses (`169.254.0.0/16`, `fe80::/10`, which hold the cloud metadata
   services, and `fd00:ec2::254`) are refused unless a `JOBS_HTTP_ALLOW` CIDR lying
   inside those ranges names them: a broad `0.0.0.0/0` or a host name never opens them.
3. `JOBS_HTTP_ALLOW` entries are allowed: a CIDR by address, a host name (or
   `*.domain`) for whatever addresses it resolves to.
4. Otherwise only public (globally routable) addresses are allowed: loopback, private,
   shared (CGNAT), unique-local, multicast and reserved ranges are refused. A NAT64
   (`64:ff9b::/96`) or 6to4 address must pass for the IPv4 address it reaches too.

Every address a name resolves to must pass, and the connection goes to a checked
address (the Host header and TLS server name stay the name), so a DNS answer that
changes between the check and the connect cannot move the request elsewhere.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import httpx

from pgjobs.netpolicy import Address, Network, address_of, network_of

LINK_LOCAL: tuple[Network, ...] = (
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
    ipaddress.ip_network("fd00:ec2::254/128"),
)
NAT64 = ipaddress.ip_network("64:ff9b::/96")


@dataclass(frozen=True, slots=True)
class Rules:
    networks: tuple[Network, ...]
    hosts: tuple[str, ...]

    @classmethod
    def of(cls, entries: Iterable[str]) -> Rules:
        networks: list[Network] = []
        hosts: list[str] = []
        for entry in entries:
            network = network_of(entry)
            if network is not None:
                networks.append(network)
            else:
                hosts.append(entry)
        return cls(tuple(networks), tuple(hosts))

    def names(self, host: str) -> bool:
        return any(
            host == rule or (rule.startswith("*.") and host.endswith(rule[1:]))
            for rule in self.hosts
        )

    def holds(self, address: Address) -> bool:
        return any(address in network for network in self.networks)


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    allow: Rules
    deny: Rules

    @classmethod
    def of(cls, allow: Iterable[str], deny: Iterable[str]) -> EgressPolicy:
        return cls(Rules.of(allow), Rules.of(deny))

    def refusal(self, host: str, addresses: Iterable[Address]) -> str | None:
        """Why a connection to `host` at `addresses` is refused, or None when it is not."""
        name = host.lower().rstrip(".")
        if self.deny.names(name):
            return f"{host} is listed in JOBS_HTTP_DENY"
        for address in addresses:
            for checked in (address, *_embedded_ipv4(address)):
                reason = self._address_refusal(name, checked)
                if reason is not None:
                    return reason if str(checked) == name else f"{host} resolves to {reason}"
        return None

    def _address_refusal(self, name: str, address: Address) -> str | None:
        if self.deny.holds(address):
            return f"{address}, which is listed in JOBS_HTTP_DENY"
        metadata = [n for n in LINK_LOCAL if address in n]
        if metadata:
            explicit = any(
                address in n and any(n.subnet_of(m) for m in metadata)  # type: ignore[arg-type]
                for n in self.allow.networks
                if n.version == address.version
            )
            if explicit:
                return None
            return (
                f"{address}, a link-local (cloud metadata) address; only a JOBS_HTTP_ALLOW "
                "entry inside 169.254.0.0/16 or fe80::/10 allows it"
            )
        if self.allow.holds(address) or self.allow.names(name) or address.is_global:
            return None
        return (
            f"{address}, a {_kind(address)} address; add it (or the host name) to "
            "JOBS_HTTP_ALLOW to call it"
        )


def _embedded_ipv4(address: Address) -> list[Address]:
    """The IPv4 address a NAT64 or 6to4 address reaches, which must pass too."""
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    if address in NAT64:
        return [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
    return [address.sixtofour] if address.sixtofour else []


def _kind(address: Address) -> str:
    if address.is_loopback:
        return "loopback"
    if address.is_private:
        return "private"
    if address.is_multicast:
        return "multicast"
    return "non-public"


class EgressDenied(Exception):
    """The egress policy refused a connection; nothing was sent."""

    def __init__(self, url: httpx.URL, reason: str) -> None:
        super().__init__(reason)
        self.url = url
        self.reason = reason


async def resolve(host: str, port: int) -> list[Address]:
    """Every address `host` resolves to, in the resolver's order, each once."""
    literal = address_of(host)
    if literal is not None:
        return [literal]
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise httpx.ConnectError(f"cannot resolve {host}: {exc.strerror or exc}") from None
    found: dict[Address, None] = {}
    for *_, sockaddr in infos:
        address = address_of(str(sockaddr[0]).partition("%")[0])
        if address is not None:
            found.setdefault(address, None)
    if not found:
        raise httpx.ConnectError(f"cannot resolve {host}: no address")
    return list(found)


Resolver = Callable[[str, int], Awaitable[list[Address]]]


class GuardedTransport(httpx.AsyncBaseTransport):
    """Checks each request's destination against the policy, then connects to the
    checked address itself (Host header and TLS server name keep the URL's name)."""

    def __init__(self, policy: EgressPolicy | None, resolver: Resolver | None = None) -> None:
        # No keep-alive: a pooled connection is keyed by address, and one made for one
        # TLS name must not carry a request for another.
        self._inner = httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_keepalive_connections=0), trust_env=False
        )
        self._policy = policy
        self._resolve = resolver or resolve

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._policy is None:
            return await self._inner.handle_async_request(request)
        url = request.url
        port = url.port or (443 if url.scheme == "https" else 80)
        addresses = await self._resolve(url.host, port)
        reason = self._policy.refusal(url.host, addresses)
        if reason is not None:
            raise EgressDenied(url, reason)
        failure: httpx.ConnectError | None = None
        for address in addresses:
            try:
                return await self._inner.handle_async_request(_pinned(request, address))
            except httpx.ConnectError as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def aclose(self) -> None:
        await self._inner.aclose()


def _pinned(request: httpx.Request, address: Address) -> httpx.Request:
    extensions = dict(request.extensions)
    if request.url.scheme == "https":
        extensions.setdefault("sni_hostname", request.url.host)
    return httpx.Request(
        request.method,
        request.url.copy_with(host=str(address)),
        headers=request.headers,  # Host: the original name
        stream=request.stream,
        extensions=extensions,
    )
