"""Web tools: `web_search` (Brave Search API) and `web_fetch` (a page as readable text).

Both reach the network only through `GuardedTransport`, so neither reaches loopback, private, link-local or
metadata addresses unless `tools.ssrfWhitelist` allows them; `web_fetch` follows redirects itself, checking
each one, and bounds the whole fetch in time (`timeoutS`) and the body in size (`maxBytes`).
"""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from nanobot.agent.tools.base import Tool
from nanobot.agent.tools.network_guard import AddressPolicy, AddressRefused, GuardedTransport, Resolver

USER_AGENT = "Mozilla/5.0 (compatible; nanobot/0.1; +https://github.com/)"
BRAVE_ENDPOINT = "https://api.search.brave.com/res/v1/web/search"
ACCEPT = "text/html,application/xhtml+xml,application/json;q=0.9,text/plain;q=0.9,*/*;q=0.5"


class FetchError(Exception):
    """Why a fetch failed, worded for the model."""


def guarded_client(policy: AddressPolicy, proxy: str | None, timeout_s: float) -> httpx.AsyncClient:
    """An httpx client that reaches only addresses `policy` allows, ignores proxy variables and .netrc, and
    does not follow redirects (callers that do must check each one)."""
    return httpx.AsyncClient(
        transport=GuardedTransport(policy, proxy),
        timeout=timeout_s,
        follow_redirects=False,
        trust_env=False,
        headers={"User-Agent": USER_AGENT},
    )


def redact(text: str, proxy: str | None) -> str:
    """`text` without the proxy URL, which may hold credentials."""
    return text.replace(proxy, "<proxy>") if proxy else text


class WebSearchTool(Tool):
    name = "web_search"
    description = "Search the web. Returns numbered results with title, URL and a short snippet."
    parameters = {
        "type": "object",
        "properties": {
            "query": {"type": "string", "minLength": 1, "description": "What to search for."},
            "count": {"type": "integer", "minimum": 1, "maximum": 20, "description": "Number of results."},
        },
        "required": ["query"],
        "additionalProperties": False,
    }

    def __init__(
        self,
        api_key: str,
        max_results: int = 5,
        endpoint: str = BRAVE_ENDPOINT,
        timeout_s: float = 15.0,
        proxy: str | None = None,
        ssrf_whitelist: Sequence[str] = (),
        resolver: Resolver | None = None,
    ) -> None:
        self.api_key = api_key
        self.max_results = max_results
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.proxy = proxy
        self.policy = AddressPolicy(ssrf_whitelist, resolver)

    async def execute(self, query: str, count: int | None = None, **_: Any) -> str:  # type: ignore[override]
        if not self.api_key:
            return (
                "Error: web search is not configured. Set tools.web.search.apiKey (a Brave Search API key) "
                "in the nanobot config file."
            )
        headers = {"Accept": "application/json", "X-Subscription-Token": self.api_key}
        params: dict[str, str | int] = {"q": query, "count": count or self.max_results}
        try:
            async with asyncio.timeout(self.timeout_s), guarded_client(self.policy, self.proxy, self.timeout_s) as c:
                response = await c.get(self.endpoint, params=params, headers=headers)
        except (TimeoutError, httpx.TimeoutException):
            return f"Error: web search timed out after {self.timeout_s:g}s"
        except AddressRefused as exc:
            return f"Error: web search endpoint refused: {exc}"
        except httpx.HTTPError as exc:
            return f"Error: web search request failed: {type(exc).__name__}: {redact(str(exc), self.proxy)}"
        if response.status_code != 200:
            return f"Error: web search failed with HTTP {response.status_code}: {response.text[:300]}"
        try:
            results = response.json().get("web", {}).get("results", [])
        except (ValueError, AttributeError):
            return "Error: web search returned a response that is not the expected JSON"
        return format_results(query, results)


def format_results(query: str, results: list[dict[str, Any]]) -> str:
    """Numbered search results: title, URL and a one-line snippet each."""
    if not results:
        return f"No results for: {query}"
    lines = [f"Results for: {query}"]
    for number, item in enumerate(results, start=1):
        title = fragment_text(str(item.get("title", ""))) or "(no title)"
        lines.append(f"\n{number}. {title}\n   {item.get('url', '')}")
        if snippet := fragment_text(str(item.get("description", ""))):
            lines.append(f"   {snippet}")
    return "\n".join(lines)


def fragment_text(fragment: str) -> str:
    """The text of an HTML fragment (Brave marks matches with <strong> and escapes entities), on one line."""
    if not fragment.strip():
        return ""
    import trafilatura  # imported on first use: workers that never read a page don't carry it

    return " ".join(trafilatura.html2txt(f"<html><body><p>{fragment}</p></body></html>").split())


# ---------------------------------------------------------------- web_fetch


@dataclass
class FetchedPage:
    """A final response: its URL and status, and its body as read (at most max_bytes; `cut` if there was more)."""

    url: str
    status: int
    reason: str
    content_type: str
    charset: str | None
    body: bytes
    cut: bool


class WebFetchTool(Tool):
    name = "web_fetch"
    description = (
        "Fetch a web page or file by URL (http or https) and return it as readable text: HTML becomes "
        "markdown with its links kept, JSON is pretty-printed. Long content is truncated. Internal and private "
        "network addresses cannot be fetched."
    )
    parameters = {
        "type": "object",
        "properties": {
            "url": {"type": "string", "minLength": 1, "description": "The http(s) URL to fetch."},
        },
        "required": ["url"],
        "additionalProperties": False,
    }

    def __init__(
        self,
        max_chars: int = 50000,
        timeout_s: float = 30.0,
        max_bytes: int = 2 * 1024 * 1024,
        max_redirects: int = 5,
        proxy: str | None = None,
        ssrf_whitelist: Sequence[str] = (),
        resolver: Resolver | None = None,
    ) -> None:
        self.max_chars = max_chars
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects
        self.proxy = proxy
        self.policy = AddressPolicy(ssrf_whitelist, resolver)

    async def execute(self, url: str, **_: Any) -> str:  # type: ignore[override]
        try:
            target = parse_fetch_url(url)
            async with asyncio.timeout(self.timeout_s):
                page = await self._fetch(target)
        except FetchError as exc:
            return f"Error: {exc}"
        except (TimeoutError, httpx.TimeoutException):
            return f"Error: timed out fetching {url} after {self.timeout_s:g}s"
        except httpx.HTTPError as exc:
            return f"Error: could not fetch {url}: {type(exc).__name__}: {redact(str(exc), self.proxy)}"
        return await self._render(page)

    async def _fetch(self, target: httpx.URL) -> FetchedPage:
        """GET `target`, following at most max_redirects redirects, each checked before it is requested."""
        headers = {"Accept": ACCEPT, "Accept-Encoding": "gzip, deflate"}
        came_from: httpx.URL | None = None
        async with guarded_client(self.policy, self.proxy, self.timeout_s) as client:
            for _ in range(self.max_redirects + 1):
                try:
                    response = await client.send(client.build_request("GET", target, headers=headers), stream=True)
                except AddressRefused as exc:
                    if came_from is None:
                        raise FetchError(f"refused to fetch {target}: {exc}") from None
                    raise FetchError(f"refused to follow the redirect from {came_from} to {target}: {exc}") from None
                try:
                    if not response.is_redirect:
                        body, cut = await read_body(response, self.max_bytes)
                        return FetchedPage(
                            str(response.url),
                            response.status_code,
                            response.reason_phrase,
                            response.headers.get("content-type", "").split(";")[0].strip().lower(),
                            response.charset_encoding,
                            body,
                            cut,
                        )
                    location = response.headers["location"]
                finally:
                    await response.aclose()
                try:
                    came_from, target = target, parse_fetch_url(str(response.url.join(location)))
                except (FetchError, httpx.InvalidURL) as exc:
                    raise FetchError(f"refused to follow the redirect from {target} to {location!r}: {exc}") from None
        raise FetchError(f"too many redirects: more than {self.max_redirects}; the last one pointed to {target}")

    async def _render(self, page: FetchedPage) -> str:
        header = [f"URL: {page.url}", f"Status: {page.status} {page.reason}".rstrip()]
        kind = page.content_type
        if "html" in kind or (not kind and page.body.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html"))):
            title, text = await asyncio.to_thread(html_to_markdown, page.body, page.charset, page.url)
            if title:
                header.append(f"Title: {title}")
        elif "json" in kind:
            text = decode_text(page.body, page.charset)
            try:
                text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
            except ValueError:
                pass  # not valid JSON (or cut short): show it as it is
        elif not kind or kind.startswith("text/") or kind.endswith(("+xml", "/xml", "javascript")):
            text = decode_text(page.body, page.charset)
        else:
            return "\n".join([*header, f"\n[binary content ({kind}, {len(page.body)} bytes) not shown]"])
        if len(text) > self.max_chars:
            text = text[: self.max_chars] + f"\n\n[truncated: showing {self.max_chars} of {len(text)} characters]"
        if page.cut:
            text += f"\n\n[cut: the response is larger than {self.max_bytes} bytes; only that much was read]"
        return "\n".join(header) + "\n\n" + text


def parse_fetch_url(url: str) -> httpx.URL:
    """`url` as an http(s) URL with a host and no user name or password; FetchError says what is wrong."""
    try:
        parsed = httpx.URL(url.strip())
    except (httpx.InvalidURL, TypeError) as exc:
        raise FetchError(f"invalid URL {url!r}: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise FetchError(f"only http and https URLs can be fetched, not {url!r}")
    if not parsed.raw_host:
        raise FetchError(f"URL has no host: {url!r}")
    if parsed.userinfo:
        raise FetchError(f"URLs with a user name or password cannot be fetched: {parsed.copy_with(userinfo=b'')}")
    return parsed


async def read_body(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """At most `limit` bytes of the decoded body, and whether there was more. Compressed bodies are inflated
    a bounded amount at a time, so a small body that inflates hugely cannot exhaust memory."""
    decoder = BoundedDecoder(response.headers.get("content-encoding", ""))
    body = bytearray()
    async for raw in response.aiter_raw():
        body += decoder.decode(raw, limit + 1 - len(body))
        if len(body) > limit:
            return bytes(body[:limit]), True
    return bytes(body), False


class BoundedDecoder:
    """Undoes a gzip or deflate Content-Encoding (the only ones web_fetch asks for), never producing more than
    the caller has room for."""

    def __init__(self, content_encoding: str) -> None:
        codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip().lower() not in ("", "identity")]
        if len(codings) > 1 or (codings and codings[0] not in ("gzip", "x-gzip", "deflate")):
            raise FetchError(f"the response has Content-Encoding {content_encoding!r}, which web_fetch cannot decode")
        self.coding = codings[0] if codings else None
        self._inflater = zlib.decompressobj(31 if self.coding in ("gzip", "x-gzip") else 15)
        self._started = False

    def decode(self, data: bytes, room: int) -> bytes:
        """At most `room` (> 0) bytes decoded from `data`; what did not fit is dropped (the caller stops then)."""
        if self.coding is None:
            return data[:room]
        try:
            return self._inflate(data, room)
        except zlib.error as exc:
            raise FetchError(f"the response body is not valid {self.coding} data ({exc})") from None

    def _inflate(self, data: bytes, room: int) -> bytes:
        first, self._started = not self._started, True
        try:
            return self._inflater.decompress(data, room)
        except zlib.error:
            if not (first and self.coding == "deflate"):
                raise
        self._inflater = zlib.decompressobj(-15)  # many servers send raw deflate without the zlib header
        return self._inflater.decompress(data, room)


def decode_text(body: bytes, charset: str | None) -> str:
    try:
        return body.decode(charset or "utf-8", errors="replace")
    except LookupError:  # an unknown charset name in the Content-Type header
        return body.decode("utf-8", errors="replace")


def html_to_markdown(body: bytes, charset: str | None, url: str) -> tuple[str, str]:
    """The <title> and the readable text of an HTML page as markdown, links kept (CPU work: run it in a thread).
    Trafilatura picks the main content; when it finds none, all the page's text is kept instead."""
    source: str | bytes = body
    if charset:
        try:
            source = body.decode(charset, errors="replace")
        except LookupError:
            pass  # an unknown charset name: let trafilatura detect the encoding
    import trafilatura  # imported on first use: workers that never read a page don't carry it

    tree = trafilatura.load_html(source)
    if tree is None:
        return "", decode_text(body, charset).strip()
    title = " ".join((tree.findtext(".//title") or "").split())
    text = trafilatura.extract(
        tree,
        url=url,
        output_format="markdown",
        include_links=True,
        include_tables=True,
        favor_recall=True,
    )
    return title, (text or trafilatura.html2txt(tree)).strip()
