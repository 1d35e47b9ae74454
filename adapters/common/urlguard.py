"""Where a URL that arrived in a webhook may be fetched from.

Two checks, both on every redirect hop (see :func:`adapters.common.http.download`):

* by name: :func:`host_allowed` — the URL's host is one the operator listed (``*.example.com`` patterns);
* by address: :class:`UrlGuard` — the host is resolved with the event loop's ``getaddrinfo`` and *every*
  address it resolves to must be a public one: loopback, private, link-local (cloud metadata at
  169.254.169.254 and fd00:ec2::254 among them), multicast, reserved, unspecified and the other
  special-purpose ranges are refused, unless inside a network of the section's ``allow_private_networks``
  (a helpdesk on the company network, the tests' 127.0.0.1).

The HTTP client resolves the name again when it connects; the address check narrows what a webhook can make
the bot fetch, the name check is what pins it to the operator's hosts.

And where credentials may go: :func:`require_https` stops start-up when a password or token would travel over
plain http to another machine.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import socket
from collections.abc import Iterable
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator

from bot.errors import StartupError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Cloud instance-metadata endpoints (AWS, GCP, Azure, OpenStack…; AWS's IPv6 one), named in refusals.
METADATA = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})


def _networks(values: list[str]) -> list[str]:
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"{value!r} is not an address or a network (10.0.0.0/8, 127.0.0.1, fd00::/8)") from None
    return values


#: A settings field: addresses or CIDR networks (checked when the settings load).
NetworkList = Annotated[list[str], AfterValidator(_networks)]


def host_allowed(url: str, hosts: Iterable[str]) -> bool:
    """An http(s) URL on one of ``hosts`` (``*.example.com`` matches its subdomains)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return parts.scheme in ("http", "https") and bool(host) and any(
        fnmatch.fnmatchcase(host, pattern.lower()) for pattern in hosts)


def where(url: str) -> str:
    """What a log line may say of a URL: its scheme and host, never its path or query (presigned URLs carry
    credentials there)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}"


class UrlRefused(Exception):
    """The URL's host is not one the bot may fetch from; the message says why and which setting allows it."""


class UrlGuard:
    """Refuses URLs whose host resolves to a non-public address outside ``allowed`` (networks or addresses).
    ``setting`` names the key that allows more, for the refusal's message."""

    def __init__(self, allowed: Iterable[str] = (), *, setting: str) -> None:
        self.allowed: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n, strict=False) for n in allowed)
        self.setting = setting

    def refusal(self, address: IPAddress) -> str | None:
        """Why ``address`` may not be fetched from, or None."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self.allowed):
            return None
        if address in METADATA:
            return "a cloud metadata address"
        for kind in ("loopback", "link_local", "unspecified", "multicast", "reserved", "private"):
            if getattr(address, f"is_{kind}"):
                return f"a {kind.replace('_', '-')} address"
        return None if address.is_global else "a special-purpose address"

    async def addresses(self, host: str, port: int) -> set[IPAddress]:
        """Every address ``host`` resolves to (itself when it is an address)."""
        try:
            return {ipaddress.ip_address(host)}
        except ValueError:
            pass
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise UrlRefused(f"{host} does not resolve ({exc})") from None
        # a scoped IPv6 address (fe80::1%eth0) is link-local: the scope does not change the verdict
        return {ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos}

    async def check(self, url: str) -> None:
        """Raise :class:`UrlRefused` unless every address of the URL's host may be fetched from."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise UrlRefused(f"{where(url)} has no valid port") from None
        if not host:
            raise UrlRefused("the URL has no host")
        for address in sorted(await self.addresses(host, port), key=str):
            reason = self.refusal(address)
            if reason:
                raise UrlRefused(f"{host} ({address}) is {reason} (list its network in {self.setting} "
                                 "to allow it)")


def is_loopback_host(host: str) -> bool:
    """``localhost`` (``*.localhost``) or a loopback address: this machine, without resolving anything."""
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_https(url: str, key: str, what: str) -> None:
    """Fail closed at start-up: ``what`` (a password, a token) is sent with every request to ``url``, so a
    plain ``http`` URL is refused unless it is this machine. The message names ``key`` and the host only."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "http" and not is_loopback_host(host):
        raise StartupError(f"{key}: {what} would travel unencrypted to {host or '?'} over http; use an https URL "
                           "(http is accepted only for this machine: localhost, 127.0.0.1, ::1)")
