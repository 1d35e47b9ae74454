"""adapters/common/urlguard.py: which addresses a URL from a webhook may reach (the adapters' own tests fetch
through it end to end: tests/test_chatwoot.py, tests/test_helpdesk_api.py, tests/test_django_helpdesk.py)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any

import pytest
from pydantic import ValidationError

from adapters.common.urlguard import UrlGuard, UrlRefused, where
from adapters.helpdesk_api import HelpdeskApiSettings


@pytest.mark.parametrize(("address", "says"), [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("10.1.2.3", "private"), ("192.168.0.10", "private"),
    ("172.16.5.4", "private"), ("169.254.169.254", "cloud metadata"), ("fd00:ec2::254", "cloud metadata"),
    ("169.254.10.1", "link-local"), ("fe80::1", "link-local"), ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
    ("0.0.0.0", "unspecified"), ("240.0.0.1", "reserved"), ("100.64.0.1", "special-purpose"),
    ("::ffff:127.0.0.1", "loopback"), ("fc00::5", "private"), ("8.8.8.8", None), ("2606:4700::1111", None),
])
def test_what_is_refused(address: str, says: str | None) -> None:
    reason = UrlGuard(setting="x").refusal(ipaddress.ip_address(address))
    assert (reason is None) if says is None else (reason is not None and says in reason)


def test_allowed_networks_open_private_ranges_only_as_far_as_listed() -> None:
    guard = UrlGuard(["10.0.0.0/8", "127.0.0.1", "169.254.169.254/32"], setting="x")
    assert guard.refusal(ipaddress.ip_address("10.20.30.40")) is None
    assert guard.refusal(ipaddress.ip_address("::ffff:10.0.0.1")) is None
    assert guard.refusal(ipaddress.ip_address("127.0.0.1")) is None
    assert guard.refusal(ipaddress.ip_address("127.0.0.2")) == "a loopback address"
    assert guard.refusal(ipaddress.ip_address("169.254.169.254")) is None  # the operator said so


async def test_every_resolved_address_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name that resolves to a public and a private address is refused (the client might connect to either)."""
    asked: list[tuple[Any, ...]] = []

    async def getaddrinfo(host: str, port: int, **kwargs: Any) -> list[tuple[Any, ...]]:
        asked.append((host, port, kwargs.get("type")))
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port)),
                (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fe80::1%eth0", port, 0, 2))]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    guard = UrlGuard(setting="adapters.x.allow_private_networks")
    with pytest.raises(UrlRefused, match=r"files\.example\.com \(fe80::1\) is a link-local address.*adapters\.x"):
        await guard.check("https://files.example.com/a.png?X-Amz-Signature=secret")
    assert asked == [("files.example.com", 443, socket.SOCK_STREAM)]
    await UrlGuard(["fe80::/10"], setting="x").check("https://files.example.com/a.png")


async def test_names_that_do_not_resolve_and_urls_without_a_host_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    async def getaddrinfo(host: str, port: int, **kwargs: Any) -> list[tuple[Any, ...]]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    guard = UrlGuard(setting="x")
    with pytest.raises(UrlRefused, match="does not resolve"):
        await guard.check("http://nowhere.invalid/a.png")
    with pytest.raises(UrlRefused, match="no host"):
        await guard.check("http:///a.png")
    with pytest.raises(UrlRefused, match="no valid port"):
        await guard.check("http://example.com:99999/a.png")


def test_log_lines_name_the_host_never_the_path_or_query() -> None:
    assert where("https://bucket.s3.amazonaws.com/k/photo.jpg?X-Amz-Signature=abc") == "https://bucket.s3.amazonaws.com"


def test_the_setting_takes_networks_and_addresses_only() -> None:
    assert HelpdeskApiSettings(allow_private_networks=["10.0.0.0/8", "fd00::/8", "127.0.0.1"])
    with pytest.raises(ValidationError, match="not an address or a network"):
        HelpdeskApiSettings(allow_private_networks=["intranet.example.com"])
