"""Tests for web_fetch and web_search against real HTTP servers on loopback: the address guard (every spelling of
an internal address, names resolving to one, redirects), the allow-list, the size and time caps, extraction."""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import json
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from nanobot.agent.tools.network_guard import AddressPolicy, AddressRefused, GuardedTransport, parse_allow_list
from nanobot.agent.tools.web import WebFetchTool, WebSearchTool

PAGE = """<!DOCTYPE html>
<html><head><title>The  Test &amp; Page</title>
<style>body { color: red; }</style>
<script>var hidden = "script text";</script></head>
<body>
<article>
<h1>Main heading</h1>
<p>First paragraph, pointing to <a href="/docs/intro">the docs</a> with <b>bold</b> words, long enough to be
the main content of this page for the extractor.</p>
<p>Fish &amp; Chips &eacute;t&eacute; and an <a href="https://example.org/x">absolute link</a>.</p>
<ul><li>one</li><li>two</li></ul>
</article>
</body></html>"""


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _no_proxy_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@asynccontextmanager
async def serve(
    routes: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]],
    host: str = "127.0.0.1",
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[tuple[str, list[str]]]:
    """A real aiohttp server on `host`, port 0: its base URL and the paths it was asked for."""
    seen: list[str] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        seen.append(request.path_qs)
        return await handler(request)

    app = web.Application(middlewares=[record])
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    await web.SockSite(runner, sock, ssl_context=ssl_context).start()
    scheme = "https" if ssl_context else "http"
    try:
        yield f"{scheme}://{host}:{sock.getsockname()[1]}", seen
    finally:
        await runner.cleanup()


def text(body: str, content_type: str = "text/plain", status: int = 200) -> Callable[..., Awaitable[web.Response]]:
    async def handler(_: web.Request) -> web.Response:
        return web.Response(body=body.encode(), status=status, headers={"Content-Type": content_type})

    return handler


def redirect(location: str, status: int = 302) -> Callable[..., Awaitable[web.Response]]:
    async def handler(_: web.Request) -> web.Response:
        return web.Response(status=status, headers={"Location": location})

    return handler


SITE = {
    "/page.html": text(PAGE, "text/html; charset=utf-8"),
    "/redirect": redirect("/page.html"),
    "/data.json": text('{"name":"nanobot","tags":["a","b"]}', "application/json"),
    "/image.png": text("\x89PNG", "image/png"),
    "/big.txt": text("0123456789" * 1000),
    "/latin1.html": text("", "text/html"),  # replaced below: a body in latin-1
    "/missing": text("no such page", status=404),
    "/loop": redirect("/loop"),
    "/to-file": redirect("file:///etc/passwd"),
}


async def _latin1(_: web.Request) -> web.Response:
    body = "<html><head><title>Caf\xe9</title></head><body><p>Cr\xe8me br\xfbl\xe9e for everyone.</p></body></html>"
    return web.Response(body=body.encode("latin-1"), headers={"Content-Type": "text/html; charset=iso-8859-1"})


SITE["/latin1.html"] = _latin1
LOOPBACK = ["127.0.0.1/32"]


# ---------------------------------------------------------------- the guard


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/",
        "http://localhost:{port}/",
        "http://127.1:{port}/",
        "http://2130706433:{port}/",
        "http://0x7f000001:{port}/",
        "http://017700000001:{port}/",
        "http://[::ffff:127.0.0.1]:{port}/",
        "http://[::ffff:7f00:1]:{port}/",
        "http://0.0.0.0:{port}/",
        "http://[::1]:{port}/",
        "https://127.0.0.1:{port}/",
    ],
)
def test_loopback_in_every_spelling_is_refused_and_never_contacted(url: str) -> None:
    async def scenario() -> tuple[str, list[str]]:
        async with serve({"/": text("secret")}) as (base, seen):
            port = base.rsplit(":", 1)[1]
            return await WebFetchTool(timeout_s=5).execute(url=url.format(port=port)), seen

    result, seen = run(scenario())
    assert result.startswith("Error: refused to fetch ") and "secret" not in result
    assert any(kind in result for kind in ("loopback", "unspecified")), result
    assert seen == []


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://[fd00:ec2::254]/latest/meta-data/", "cloud metadata"),
        ("http://100.100.100.200/latest/meta-data/", "cloud metadata"),
        ("http://169.254.1.1/", "link-local"),
        ("http://10.0.0.1/", "private"),
        ("http://192.168.1.1/", "private"),
        ("http://[fd12:3456::1]/", "private"),
        ("http://100.64.0.1/", "shared"),
        ("http://224.0.0.1/", "multicast"),
        ("http://[2002:a00:1::]/", "10.0.0.1, which is a private address"),
        ("http://[64:ff9b::a9fe:a9fe]/", "169.254.169.254, which is a cloud metadata address"),
    ],
)
def test_internal_addresses_are_refused_before_any_connection(url: str, kind: str) -> None:
    started = time.monotonic()
    result = run(WebFetchTool(timeout_s=10).execute(url=url))
    assert time.monotonic() - started < 1.0  # refused, not a connection attempt running into the timeout
    assert result.startswith(f"Error: refused to fetch {url}: ") and kind in result, result


def test_a_name_is_refused_when_any_of_its_addresses_is_internal() -> None:
    async def resolver(host: str, port: int) -> Sequence[str]:
        return {"intranet.example": ["93.184.216.34", "10.1.2.3"], "db.example": ["fd00::5"]}[host]

    tool = WebFetchTool(timeout_s=5, resolver=resolver)
    result = run(tool.execute(url="http://intranet.example/"))
    assert result == (
        "Error: refused to fetch http://intranet.example/: "
        "intranet.example resolves to 10.1.2.3, which is a private address"
    )
    assert "fd00::5, which is a private address" in run(tool.execute(url="https://db.example:8443/x"))


def test_address_policy_decisions() -> None:
    policy = AddressPolicy(["192.168.1.50", "fd00:1::/64"])
    allowed = ["8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "192.168.1.50", "fd00:1::9"]
    refused = ["192.168.1.51", "fd00:2::1", "::", "::1", "fe80::1", "fec0::1", "ff02::1", "240.0.0.1",
               "255.255.255.255", "198.18.0.1", "::7f00:1", "2002:7f00:1::",
               "2001:0:4136:e378:8000:63bf:3fff:fdd2"]  # fmt: skip
    assert [a for a in allowed if policy.why_refused(ipaddress.ip_address(a))] == []
    assert [a for a in refused if policy.why_refused(ipaddress.ip_address(a)) is None] == []
    # a mapped form of an allowed address is allowed: it is the same destination
    assert policy.why_refused(ipaddress.ip_address("::ffff:192.168.1.50")) is None


def test_bad_allow_list_entries_are_named() -> None:
    assert [str(n) for n in parse_allow_list(["127.0.0.1", "10.0.0.0/8", "::1"])] == [
        "127.0.0.1/32",
        "10.0.0.0/8",
        "::1/128",
    ]
    with pytest.raises(ValueError, match=r"tools\.ssrfWhitelist\[1\]: 'intranet' is not an IP address"):
        WebFetchTool(ssrf_whitelist=["10.0.0.0/8", "intranet"])
    with pytest.raises(ValueError, match=r"tools\.ssrfWhitelist\[0\]"):
        WebSearchTool(api_key="k", ssrf_whitelist=["10.0.0.0/33"])


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "ftp://example.com/x", "gopher://127.0.0.1:6379/_INFO", "not a url", "http://", "//x/"],
)
def test_non_http_urls_are_refused(url: str) -> None:
    assert run(WebFetchTool().execute(url=url)).startswith("Error: ")


def test_credentials_in_urls_are_refused() -> None:
    result = run(WebFetchTool().execute(url="http://user:pw@example.com@127.0.0.1/"))
    assert result.startswith("Error: URLs with a user name or password cannot be fetched") and "pw" not in result


# ---------------------------------------------------------------- redirects


def test_a_redirect_to_loopback_is_refused_and_the_target_never_contacted() -> None:
    async def scenario() -> tuple[str, str, str, list[str], list[str]]:
        async with (
            serve({"/secret": text("the secret")}) as (secret, secret_seen),
            serve({"/to-secret": redirect(f"{secret}/secret")}, host="127.0.0.2") as (public, public_seen),
        ):
            tool = WebFetchTool(timeout_s=5, ssrf_whitelist=["127.0.0.2/32"])
            return await tool.execute(url=f"{public}/to-secret"), public, secret, public_seen, secret_seen

    result, public, secret, public_seen, secret_seen = run(scenario())
    assert result == (
        f"Error: refused to follow the redirect from {public}/to-secret to {secret}/secret: "
        "127.0.0.1 is a loopback address"
    )
    assert public_seen == ["/to-secret"] and secret_seen == []


def test_redirects_to_other_schemes_and_redirect_loops_are_refused() -> None:
    async def scenario() -> tuple[str, str, str]:
        async with serve(SITE) as (base, _):
            tool = WebFetchTool(timeout_s=5, max_redirects=3, ssrf_whitelist=LOOPBACK)
            return await tool.execute(url=f"{base}/to-file"), await tool.execute(url=f"{base}/loop"), base

    to_file, loop, base = run(scenario())
    assert to_file.startswith(f"Error: refused to follow the redirect from {base}/to-file to 'file:///etc/passwd'")
    assert loop == f"Error: too many redirects: more than 3; the last one pointed to {base}/loop"


# ---------------------------------------------------------------- whitelisted fetches and extraction


def test_whitelisted_fetch_follows_redirects_and_returns_markdown_with_links() -> None:
    async def scenario() -> tuple[str, str]:
        async with serve(SITE) as (base, _):
            return await WebFetchTool(ssrf_whitelist=["127.0.0.1"]).execute(url=f"{base}/redirect"), base

    result, base = run(scenario())
    assert result.startswith(f"URL: {base}/page.html\nStatus: 200 OK\nTitle: The Test & Page\n\n# Main heading\n")
    assert f"[the docs]({base}/docs/intro)" in result
    assert "[absolute link](https://example.org/x)" in result and "**bold**" in result
    assert "Fish & Chips été" in result and "- one\n- two" in result
    assert "script text" not in result and "color: red" not in result and "<p>" not in result


def test_json_text_status_binary_and_charset() -> None:
    async def scenario() -> list[str]:
        async with serve(SITE) as (base, _):
            tool = WebFetchTool(ssrf_whitelist=LOOPBACK)
            paths = ["/data.json", "/missing", "/image.png", "/latin1.html", "/big.txt"]
            return [await tool.execute(url=base + path) for path in paths]

    data, missing, image, latin1, big = run(scenario())
    assert '{\n  "name": "nanobot",\n  "tags": [\n    "a",' in data
    assert "Status: 404 Not Found" in missing and missing.endswith("\n\nno such page")
    assert "[binary content (image/png, 5 bytes) not shown]" in image
    assert "Title: Café" in latin1 and "Crème brûlée for everyone." in latin1
    assert big.endswith("\n\n" + "0123456789" * 1000)


def test_text_for_the_model_is_capped() -> None:
    async def scenario() -> str:
        async with serve(SITE) as (base, _):
            return await WebFetchTool(max_chars=100, ssrf_whitelist=LOOPBACK).execute(url=f"{base}/big.txt")

    body = run(scenario()).split("\n\n", 1)[1]
    assert body == "0123456789" * 10 + "\n\n[truncated: showing 100 of 10000 characters]"


def test_connection_errors_are_text() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run(WebFetchTool(timeout_s=5, ssrf_whitelist=LOOPBACK).execute(url=f"http://127.0.0.1:{port}/"))
    assert result.startswith(f"Error: could not fetch http://127.0.0.1:{port}/: ConnectError")


def test_proxy_variables_of_the_environment_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> tuple[str, list[str]]:
        async with serve({"/{tail:.*}": text("via proxy")}) as (proxy, proxy_seen), serve(SITE) as (base, _):
            monkeypatch.setenv("HTTP_PROXY", proxy)
            monkeypatch.setenv("ALL_PROXY", proxy)
            result = await WebFetchTool(ssrf_whitelist=LOOPBACK).execute(url=f"{base}/big.txt")
            return result, proxy_seen

    result, proxy_seen = run(scenario())
    assert result.endswith("0123456789") and proxy_seen == []


def test_configured_proxy_carries_the_request_after_the_target_is_checked() -> None:
    async def resolver(host: str, port: int) -> Sequence[str]:
        return {"public.example": ["93.184.216.34"], "internal.example": ["10.0.0.7"]}[host]

    async def proxy_handler(request: web.Request) -> web.Response:
        return web.Response(text=f"proxied {request.url}", content_type="text/plain")

    async def scenario() -> tuple[str, str, list[str]]:
        async with serve({"/{tail:.*}": proxy_handler}) as (proxy, seen):
            tool = WebFetchTool(timeout_s=5, proxy=proxy, resolver=resolver)
            public = await tool.execute(url="http://public.example/page")
            internal = await tool.execute(url="http://internal.example/page")
            return public, internal, seen

    public, internal, seen = run(scenario())
    assert public.endswith("\n\nproxied http://public.example/page")
    assert internal == (
        "Error: refused to fetch http://internal.example/page: "
        "internal.example resolves to 10.0.0.7, which is a private address"
    )
    assert seen == ["/page"]  # only the public target went to the proxy


# ---------------------------------------------------------------- caps


async def _endless(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await response.prepare(request)
    chunk = b"x" * 65536
    for _ in range(800):  # 50 MiB
        await response.write(chunk)
    await response.write_eof()
    return response


async def _drip(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await response.prepare(request)
    for _ in range(100):
        await response.write(b".")
        await asyncio.sleep(0.1)
    return response


def _gzip_bomb() -> Callable[..., Awaitable[web.Response]]:
    compressed = gzip.compress(b"\0" * (20 * 1024 * 1024), compresslevel=9)

    async def handler(_: web.Request) -> web.Response:
        headers = {"Content-Type": "text/plain", "Content-Encoding": "gzip"}
        return web.Response(body=compressed, headers=headers)

    return handler


def test_big_and_compressed_bodies_are_cut_at_max_bytes() -> None:
    async def scenario() -> tuple[str, str, str, float]:
        async with serve({"/endless": _endless, "/bomb": _gzip_bomb(), "/small.gz": _small_gzip}) as (base, _):
            tool = WebFetchTool(timeout_s=10, max_bytes=100_000, max_chars=1_000_000, ssrf_whitelist=LOOPBACK)
            started = time.monotonic()
            endless = await tool.execute(url=f"{base}/endless")
            elapsed = time.monotonic() - started
            return endless, await tool.execute(url=f"{base}/bomb"), await tool.execute(url=f"{base}/small.gz"), elapsed

    endless, bomb, small, elapsed = run(scenario())
    note = "\n\n[cut: the response is larger than 100000 bytes; only that much was read]"
    assert elapsed < 3.0
    assert endless.endswith("x" * 100_000 + note) and "x" * 100_001 not in endless
    assert bomb.endswith(note) and len(bomb) < 110_000
    assert small.endswith("\n\nhello, compressed world")


async def _small_gzip(_: web.Request) -> web.Response:
    headers = {"Content-Type": "text/plain", "Content-Encoding": "gzip"}
    return web.Response(body=gzip.compress(b"hello, compressed world"), headers=headers)


def test_the_whole_fetch_is_bounded_in_time() -> None:
    async def scenario() -> tuple[list[tuple[str, float]], str]:
        connections: list[asyncio.StreamWriter] = []

        async def never_answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(writer)

        silent = await asyncio.start_server(never_answer, "127.0.0.1", 0)
        silent_port = silent.sockets[0].getsockname()[1]
        results = []
        try:
            async with serve({"/drip": _drip}) as (base, _):
                tool = WebFetchTool(timeout_s=1, ssrf_whitelist=LOOPBACK)
                for url in (f"http://127.0.0.1:{silent_port}/", f"{base}/drip"):
                    started = time.monotonic()
                    results.append((await tool.execute(url=url), time.monotonic() - started))
        finally:
            for writer in connections:
                writer.close()
            silent.close()
            await silent.wait_closed()
        return results, str(silent_port)

    results, silent_port = run(scenario())
    (silent, silent_s), (drip, drip_s) = results
    assert silent == f"Error: timed out fetching http://127.0.0.1:{silent_port}/ after 1s"
    assert drip.startswith("Error: timed out fetching ") and drip.endswith("/drip after 1s")
    assert 0.9 < silent_s < 2.5 and 0.9 < drip_s < 2.5  # a byte every 0.1 s never trips a read timeout


# ---------------------------------------------------------------- TLS to a checked address


def _certificate(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
         "-addext", f"subjectAltName=DNS:{name}", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_tls_goes_to_the_checked_address_and_verifies_the_host_name(tmp_path: Path) -> None:
    cert, key = _certificate(tmp_path, "pinned.test")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    client_tls = ssl.create_default_context(cafile=str(cert))

    async def resolver(host: str, port: int) -> Sequence[str]:
        return {"pinned.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]}[host]

    async def echo_host(request: web.Request) -> web.Response:
        return web.Response(text=request.host)

    async def scenario() -> tuple[str, str, list[str]]:
        async with serve({"/": echo_host}, ssl_context=server_tls) as (base, seen):
            port = base.rsplit(":", 1)[1]
            policy = AddressPolicy(LOOPBACK, resolver)
            async with httpx.AsyncClient(transport=GuardedTransport(policy, verify=client_tls)) as client:
                good = (await client.get(f"https://pinned.test:{port}/")).text
                try:
                    await client.get(f"https://other.test:{port}/")
                    wrong_name = "connected"
                except httpx.ConnectError as exc:
                    wrong_name = str(exc)
            return good, wrong_name, seen

    good, wrong_name, seen = run(scenario())
    assert good.startswith("pinned.test:")  # Host header and certificate name are the URL's, the socket 127.0.0.1
    assert "certificate verify failed" in wrong_name and "other.test" in wrong_name
    assert seen == ["/"]


def test_guarded_transport_refuses_unlisted_addresses_for_any_client() -> None:
    async def scenario() -> str:
        async with (
            serve({"/": text("secret")}) as (base, _),
            httpx.AsyncClient(transport=GuardedTransport(AddressPolicy()), follow_redirects=True) as client,
        ):
            try:
                await client.get(base)
            except AddressRefused as exc:
                return str(exc)
            return "fetched"

    assert run(scenario()) == "127.0.0.1 is a loopback address"


# ---------------------------------------------------------------- web_search


def _search_routes(requests: list[dict[str, Any]]) -> dict[str, Any]:
    async def search(request: web.Request) -> web.Response:
        token = request.headers.get("X-Subscription-Token")
        requests.append({"q": request.query.get("q"), "count": request.query.get("count"), "token": token})
        if token != "test-key":
            return web.json_response({"error": "bad token"}, status=401)
        results = [
            {
                "title": f"Result <strong>{n}</strong> for {request.query['q']}",
                "url": f"https://example.com/{n}",
                "description": f"Snippet &amp; <strong>text</strong> {n}",
            }
            for n in range(1, int(request.query["count"]) + 1)
        ]
        return web.Response(text=json.dumps({"web": {"results": results}}), content_type="application/json")

    return {"/search": search}


def test_web_search_formats_results() -> None:
    requests: list[dict[str, Any]] = []

    async def scenario() -> tuple[str, str]:
        async with serve(_search_routes(requests)) as (base, _):
            tool = WebSearchTool(api_key="test-key", max_results=2, endpoint=f"{base}/search", ssrf_whitelist=LOOPBACK)
            return await tool.execute(query="nanobot tools"), await tool.execute(query="x", count=3)

    two, three = run(scenario())
    assert two == (
        "Results for: nanobot tools\n"
        "\n1. Result 1 for nanobot tools\n   https://example.com/1\n   Snippet & text 1\n"
        "\n2. Result 2 for nanobot tools\n   https://example.com/2\n   Snippet & text 2"
    )
    assert requests[0] == {"q": "nanobot tools", "count": "2", "token": "test-key"}
    assert "3. Result 3 for x" in three


def test_web_search_errors_and_guard() -> None:
    requests: list[dict[str, Any]] = []

    async def scenario() -> tuple[str, str]:
        async with serve(_search_routes(requests)) as (base, _):
            bad_key = WebSearchTool(api_key="wrong", endpoint=f"{base}/search", ssrf_whitelist=LOOPBACK)
            unlisted = WebSearchTool(api_key="test-key", endpoint=f"{base}/search")
            return await bad_key.execute(query="x"), await unlisted.execute(query="x")

    assert run(WebSearchTool(api_key="").execute(query="x")).startswith(
        "Error: web search is not configured. Set tools.web.search.apiKey"
    )
    bad_key, unlisted = run(scenario())
    assert bad_key.startswith("Error: web search failed with HTTP 401")
    assert unlisted == "Error: web search endpoint refused: 127.0.0.1 is a loopback address"
    assert [r["token"] for r in requests] == ["wrong"]  # the unlisted endpoint never got the key
