"""Web tools: `web_search` (Brave Search API) and `web_fetch` (a page as readable text)."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from typing import Any, NamedTuple
from urllib.parse import urlparse

import httpx

from nanobot.agent.tools.base import Tool

USER_AGENT = "Mozilla/5.0 (compatible; nanobot/0.1; +https://github.com/)"
BRAVE_ENDPOINT = "https://api.search.brave.com/res/v1/web/search"
# The most bytes web_fetch downloads, whatever max_chars says, so a huge file cannot exhaust memory.
MAX_DOWNLOAD_BYTES = 5 * 1024 * 1024


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
        self, api_key: str, max_results: int = 5, endpoint: str = BRAVE_ENDPOINT, timeout_s: float = 15.0
    ) -> None:
        self.api_key = api_key
        self.max_results = max_results
        self.endpoint = endpoint
        self.timeout_s = timeout_s

    async def execute(self, query: str, count: int | None = None, **_: Any) -> str:  # type: ignore[override]
        if not self.api_key:
            return (
                "Error: web search is not configured. Set tools.web.search.apiKey (a Brave Search API key) "
                "in the nanobot config file."
            )
        headers = {"Accept": "application/json", "X-Subscription-Token": self.api_key}
        params: dict[str, str | int] = {"q": query, "count": count or self.max_results}
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s, headers={"User-Agent": USER_AGENT}) as client:
                response = await client.get(self.endpoint, params=params, headers=headers)
        except httpx.TimeoutException:
            return f"Error: web search timed out after {self.timeout_s:g}s"
        except httpx.HTTPError as exc:
            return f"Error: web search request failed: {type(exc).__name__}: {exc}"
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
        title = html_to_text(str(item.get("title", ""))).text or "(no title)"
        lines.append(f"\n{number}. {title}\n   {item.get('url', '')}")
        snippet = html_to_text(str(item.get("description", ""))).text
        if snippet:
            lines.append(f"   {snippet}")
    return "\n".join(lines)


class WebFetchTool(Tool):
    name = "web_fetch"
    description = (
        "Fetch a web page or file by URL (http or https) and return it as readable text: HTML is "
        "converted to plain text, JSON is pretty-printed. Long content is truncated."
    )
    parameters = {
        "type": "object",
        "properties": {
            "url": {"type": "string", "minLength": 1, "description": "The http(s) URL to fetch."},
        },
        "required": ["url"],
        "additionalProperties": False,
    }

    def __init__(self, max_chars: int = 50000, timeout_s: float = 30) -> None:
        self.max_chars = max_chars
        self.timeout_s = timeout_s

    async def execute(self, url: str, **_: Any) -> str:  # type: ignore[override]
        if error := check_url(url):
            return f"Error: {error}"
        try:
            async with (
                httpx.AsyncClient(
                    follow_redirects=True, timeout=self.timeout_s, headers={"User-Agent": USER_AGENT}
                ) as client,
                client.stream("GET", url) as response,
            ):
                body = await _read_limited(response, MAX_DOWNLOAD_BYTES)
        except httpx.TimeoutException:
            return f"Error: timed out fetching {url} after {self.timeout_s:g}s"
        except httpx.HTTPError as exc:
            return f"Error: could not fetch {url}: {type(exc).__name__}: {exc}"
        return self._render(response, body)

    def _render(self, response: httpx.Response, body: bytes) -> str:
        header = [f"URL: {response.url}", f"Status: {response.status_code} {response.reason_phrase}".rstrip()]
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        text = _decode(body, response.charset_encoding)
        if "html" in content_type or (not content_type and _looks_like_html(text)):
            page = html_to_text(text)
            if page.title:
                header.append(f"Title: {page.title}")
            text = page.text
        elif "json" in content_type:
            try:
                text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
            except ValueError:
                pass  # not valid JSON after all: show it as it is
        elif content_type and not _is_textual(content_type):
            return "\n".join([*header, f"\n[binary content ({content_type}, {len(body)} bytes) not shown]"])
        if len(body) >= MAX_DOWNLOAD_BYTES:
            text += f"\n[download stopped after {MAX_DOWNLOAD_BYTES} bytes]"
        if len(text) > self.max_chars:
            text = text[: self.max_chars] + f"\n\n[truncated: showing {self.max_chars} of {len(text)} characters]"
        return "\n".join(header) + "\n\n" + text


def check_url(url: str) -> str | None:
    """Why `url` cannot be fetched, or None if it is an acceptable http(s) URL."""
    try:
        parsed = urlparse(url)
    except ValueError as exc:
        return f"invalid URL {url!r}: {exc}"
    if parsed.scheme not in ("http", "https"):
        return f"only http and https URLs can be fetched, not {url!r}"
    if not parsed.hostname:
        return f"URL has no host: {url!r}"
    return None


async def _read_limited(response: httpx.Response, limit: int) -> bytes:
    data = bytearray()
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) >= limit:
            return bytes(data[:limit])
    return bytes(data)


def _decode(body: bytes, charset: str | None) -> str:
    try:
        return body.decode(charset or "utf-8", errors="replace")
    except LookupError:  # an unknown charset name in the Content-Type header
        return body.decode("utf-8", errors="replace")


def _looks_like_html(text: str) -> bool:
    start = text.lstrip()[:200].lower()
    return start.startswith("<!doctype html") or start.startswith("<html")


def _is_textual(content_type: str) -> bool:
    return content_type.startswith("text/") or content_type.endswith(("+xml", "/xml", "javascript"))


# ---------------------------------------------------------------- HTML to text


class PageText(NamedTuple):
    """The readable text of an HTML document and its <title>."""

    title: str
    text: str


_SKIPPED_TAGS = {"script", "style", "noscript", "template", "svg", "nav", "iframe", "object", "canvas"}
_BLOCK_TAGS = {
    "address", "article", "aside", "blockquote", "br", "dd", "details", "div", "dl", "dt", "figcaption",
    "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main", "ol",
    "p", "pre", "section", "summary", "table", "tr", "ul",
}  # fmt: skip
# Block elements end a line; paragraphs and headings also leave a blank line, marked by a line holding _MARK.
_MARK = "\x00"
_PARAGRAPH = f"\n{_MARK}\n"
_HEADINGS = {"h1": "# ", "h2": "## ", "h3": "### ", "h4": "#### ", "h5": "##### ", "h6": "###### "}


class _TextExtractor(HTMLParser):
    """Collects text, turning block elements into line breaks and skipping non-content elements."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)  # entities arrive already unescaped
        self.parts: list[str] = []
        self.title_parts: list[str] = []
        self.skip_depth = 0
        self.in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED_TAGS:
            self.skip_depth += 1
        elif tag == "title":
            self.in_title = True
        elif tag in _HEADINGS:
            self.parts.append(_PARAGRAPH + _HEADINGS[tag])
        elif tag == "li":
            self.parts.append("\n- ")
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")
        elif tag in ("td", "th"):
            self.parts.append(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _SKIPPED_TAGS:  # a self-closed <svg/> must not start skipping
            self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED_TAGS:
            self.skip_depth = max(0, self.skip_depth - 1)
        elif tag == "title":
            self.in_title = False
        elif tag in _HEADINGS or tag == "p":
            self.parts.append(_PARAGRAPH)
        elif tag in _BLOCK_TAGS and tag != "li":
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self.skip_depth:
            return
        if self.in_title:
            self.title_parts.append(data)
        else:
            self.parts.append(re.sub(r"\s+", " ", data.replace(_MARK, "")))


def html_to_text(html: str) -> PageText:
    """Readable text from HTML: no scripts, styles or navigation; blocks on their own lines."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    title = " ".join("".join(parser.title_parts).split())
    lines: list[str] = []
    for raw in "".join(parser.parts).splitlines():
        line = " ".join(raw.split())
        if line == _MARK:
            if lines and lines[-1]:
                lines.append("")
        elif line:
            lines.append(line)
    return PageText(title, "\n".join(lines).strip())
