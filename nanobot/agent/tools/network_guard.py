"""Which network addresses the web tools may reach, and an httpx transport that connects only to checked ones.

An address is refused unless it is globally reachable: loopback, private (RFC 1918, fc00::/7), link-local,
unspecified, multicast, reserved, shared (100.64.0.0/10), site-local and cloud metadata addresses all are, and
so are IPv6 forms that carry such an IPv4 address (IPv4-mapped, IPv4-compatible, NAT64, 6to4, Teredo). The
operator's allow-list (`tools.ssrfWhitelist`, CIDR ranges) lets chosen ranges through all the same.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# A host name and port -> the addresses it resolves to, as text (a test may pass its own; the default is DNS).
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

ALLOW_LIST_KEY = "tools.ssrfWhitelist"
# Instance metadata services (AWS, ECS, Azure and GCP share 169.254.169.254; Alibaba uses 100.100.100.200).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(text) for text in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class AddressRefused(Exception):
    """A URL's host is, or resolves to, an address the web tools may not reach."""


def parse_allow_list(entries: Sequence[str], key: str = ALLOW_LIST_KEY) -> tuple[IPNetwork, ...]:
    """The networks of `entries` (CIDR ranges; a bare address is a /32 or /128); ValueError names a bad entry."""
    networks: list[IPNetwork] = []
    for index, entry in enumerate(entries):
        try:
            networks.append(ipaddress.ip_network(str(entry).strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"{key}[{index}]: {entry!r} is not an IP address or CIDR range ({exc})") from None
    return tuple(networks)


def non_public_kind(address: IPAddress) -> str | None:
    """What kind of non-public address `address` itself is ("a loopback address"...), or None if it is public."""
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    checks = (
        (address.is_unspecified, "an unspecified address"),
        (address.is_loopback, "a loopback address"),
        (address.is_link_local, "a link-local address"),
        (address.is_multicast, "a multicast address"),
        (isinstance(address, ipaddress.IPv4Address) and address in _SHARED, "a shared (carrier-grade NAT) address"),
        (isinstance(address, ipaddress.IPv6Address) and address.is_site_local, "a site-local address"),
        (address.is_private, "a private address"),
        (address.is_reserved, "a reserved address"),
        (not address.is_global, "not a globally reachable address"),
    )
    return next((kind for refused, kind in checks if refused), None)


def embedded_ipv4(address: IPAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (mapped, compatible, NAT64, 6to4, Teredo server and client)."""
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address.sixtofour is not None:
        return [address.sixtofour]
    if address.teredo is not None:
        return list(address.teredo)
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        return [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
    return []


def _is_mapped(address: IPAddress) -> bool:
    return isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None


class AddressPolicy:
    """Decides which addresses may be reached, and resolves host names to addresses that may."""

    def __init__(self, allow: Sequence[str] = (), resolver: Resolver | None = None) -> None:
        self.allowed = parse_allow_list(allow)
        self.resolver: Resolver = resolver or resolve_with_dns

    def is_allowed(self, address: IPAddress) -> bool:
        return any(address.version == network.version and address in network for network in self.allowed)

    def why_refused(self, address: IPAddress) -> str | None:
        """Why `address` may not be reached, as a verb phrase ("is a loopback address"), or None if it may."""
        if self.is_allowed(address):
            return None
        inner = embedded_ipv4(address)
        # Mapped, compatible and NAT64 forms are reserved as such, but packets go to the IPv4 address they carry.
        translated = bool(inner) and (address in _IPV4_COMPATIBLE or address in _NAT64 or _is_mapped(address))
        if not translated and (kind := non_public_kind(address)):
            return f"is {kind}"
        for ipv4 in inner:
            if not self.is_allowed(ipv4) and (kind := non_public_kind(ipv4)):
                return f"carries {ipv4}, which is {kind}"
        return None

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """The addresses `host` resolves to, all allowed; AddressRefused if any is not, OSError if none."""
        try:
            literal: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            if reason := self.why_refused(literal):
                raise AddressRefused(f"{literal} {reason}")
            return [literal]
        addresses = [ipaddress.ip_address(text) for text in dict.fromkeys(await self.resolver(host, port))]
        if not addresses:
            raise OSError(f"{host} resolves to no address")
        for address in addresses:
            if reason := self.why_refused(address):
                raise AddressRefused(f"{host} resolves to {address}, which {reason}")
        return addresses


async def resolve_with_dns(host: str, port: int) -> list[str]:
    """The addresses the system resolver gives for `host` (also parses `127.1`, `2130706433`, `0x7f000001`...)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class GuardedTransport(httpx.AsyncBaseTransport):
    """Sends a request only when every address of its host passed the policy, then connects to a checked address
    itself (the Host header and the TLS name and certificate check stay the URL's host), so the name cannot
    resolve differently between the check and the connection.

    Through a proxy (`tools.web.proxy`) the proxy makes the connection and resolves the name again: the check
    then covers the target name as it resolves here, not what the proxy reaches (httpx cannot keep the TLS name
    when tunnelling to an address), so a proxy must itself refuse internal addresses. `verify`: the certificate
    check, as httpx takes it (a test passes its own CA's context)."""

    def __init__(self, policy: AddressPolicy, proxy: str | None = None, verify: ssl.SSLContext | bool = True) -> None:
        self.policy = policy
        self.proxied = bool(proxy)
        # No kept-alive connections: the pool knows a connection by its address only, so a connection verified
        # for one host name could otherwise carry a request for another name with the same address.
        no_reuse = httpx.Limits(max_keepalive_connections=0)
        self._inner = httpx.AsyncHTTPTransport(proxy=proxy or None, verify=verify, trust_env=False, limits=no_reuse)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.raw_host.decode("ascii")
        port = request.url.port or (443 if request.url.scheme == "https" else 80)
        try:
            addresses = await self.policy.resolve(host, port)
        except OSError as exc:
            raise httpx.ConnectError(f"cannot resolve {host}: {exc.strerror or exc}", request=request) from None
        if self.proxied:
            return await self._inner.handle_async_request(request)
        failure: httpx.ConnectError | None = None
        for address in addresses:
            pinned = httpx.Request(
                request.method,
                request.url.copy_with(host=str(address)),
                headers=request.headers,  # holds Host: the URL's host, set when the request was built
                stream=request.stream,
                extensions={**request.extensions, "sni_hostname": host},
            )
            try:
                return await self._inner.handle_async_request(pinned)
            except httpx.ConnectError as exc:  # nothing was sent: the next address may answer
                failure = exc
        assert failure is not None
        raise failure

    async def aclose(self) -> None:
        await self._inner.aclose()
