"""What the agent writes (Markdown) turned into what Telegram shows: its HTML subset, in parts it accepts.

`split_markdown` cuts a long reply into parts of at most `limit` characters, at a blank line, else a line
end, else a space, and never leaves a code block open: a block cut in two is closed at the end of one part
and reopened (same language) at the start of the next. `to_telegram_html` renders one part with
markdown-it-py's parser into the tags Telegram accepts (b, i, s, code, pre, a, blockquote); everything
else is escaped text, so what the model writes can never produce markup Telegram rejects.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

from markdown_it import MarkdownIt
from markdown_it.token import Token

# Telegram's limit is 4096 characters of visible text; Markdown source is at least as long as what it shows.
TELEGRAM_TEXT_LIMIT = 4096
PART_LIMIT = 4000

_FENCE = re.compile(r"^(\s{0,3})(`{3,}|~{3,})(.*)$")
_parser = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable(["strikethrough", "table"])


# ---------------------------------------------------------------- splitting
def split_markdown(text: str, limit: int = PART_LIMIT) -> list[str]:
    """Parts of at most `limit` characters, code blocks kept whole or closed and reopened across parts."""
    if len(text) <= limit:
        return [text] if text.strip() else []
    parts: list[str] = []
    lines: list[str] = []
    fence: tuple[str, str] | None = None  # (marker, info) of the code block open at the end of `lines`

    def size() -> int:
        return sum(len(line) + 1 for line in lines)

    def flush(reopen: tuple[str, str] | None) -> None:
        body = "\n".join(lines).strip("\n")
        if reopen is not None:
            body += f"\n{reopen[0]}"
        if body.strip():
            parts.append(body)
        lines.clear()
        if reopen is not None:
            lines.append(f"{reopen[0]}{reopen[1]}")

    for line in _hard_wrapped(text.split("\n"), limit - 16):
        if lines and size() + len(line) + 16 > limit:
            cut = _blank_line_cut(lines) if fence is None else None
            if cut is not None:
                rest = lines[cut + 1 :]
                del lines[cut:]
                flush(None)
                lines.extend(rest)
            else:
                flush(fence)
        lines.append(line)
        match = _FENCE.match(line)
        if match:
            if fence is None:
                fence = (match.group(2), match.group(3).strip())
            elif match.group(2).startswith(fence[0]) and not match.group(3).strip():
                fence = None
    flush(None)
    return parts


def _blank_line_cut(lines: list[str]) -> int | None:
    """The last blank line outside any code block, if it keeps at least half of the part."""
    fence = None
    best = None
    for index, line in enumerate(lines):
        match = _FENCE.match(line)
        if match:
            fence = None if fence else match.group(2)
        elif fence is None and not line.strip() and index >= len(lines) // 2:
            best = index
    return best


def _hard_wrapped(lines: Sequence[str], width: int) -> list[str]:
    """Lines longer than `width` cut at the last space before it (or at `width` when there is none)."""
    out: list[str] = []
    for line in lines:
        while len(line) > width:
            cut = line.rfind(" ", 0, width)
            cut = cut if cut > width // 2 else width
            out.append(line[:cut])
            line = line[cut:].lstrip(" ")
        out.append(line)
    return out


# ---------------------------------------------------------------- rendering
def to_telegram_html(markdown: str) -> str:
    """One part of a reply as Telegram HTML."""
    return _render(_parser.parse(markdown)).strip()


def _esc(text: str) -> str:
    return html.escape(text, quote=False)


def _render(tokens: list[Token]) -> str:
    out: list[str] = []
    lists: list[list[int]] = []  # one entry per open list: [next number] for ordered, [] for bullets
    for token in tokens:
        kind = token.type
        if kind == "inline":
            out.append(_inline(token.children or []))
        elif kind in ("paragraph_close", "heading_close"):
            if kind == "heading_close":
                out.append("</b>")
            out.append("\n" if token.hidden else "\n\n")
        elif kind == "heading_open":
            out.append("<b>")
        elif kind in ("fence", "code_block"):
            language = (token.info or "").split(maxsplit=1)[0] if token.info else ""
            attribute = f' class="language-{_esc(language)}"' if re.fullmatch(r"[\w+#.-]+", language) else ""
            out.append(f"<pre><code{attribute}>{_esc(token.content.rstrip(chr(10)))}</code></pre>\n\n")
        elif kind == "blockquote_open":
            out.append("<blockquote>")
        elif kind == "blockquote_close":
            _trim_trailing_newlines(out)
            out.append("</blockquote>\n\n")
        elif kind == "bullet_list_open":
            lists.append([])
        elif kind == "ordered_list_open":
            lists.append([int(token.attrGet("start") or 1)])
        elif kind in ("bullet_list_close", "ordered_list_close"):
            lists.pop()
            if not lists:
                out.append("\n")
        elif kind == "list_item_open":
            indent = "  " * (len(lists) - 1)
            counter = lists[-1] if lists else []
            if counter:
                out.append(f"{indent}{counter[0]}. ")
                counter[0] += 1
            else:
                out.append(f"{indent}• ")
        elif kind == "list_item_close":
            _trim_trailing_newlines(out)
            out.append("\n")
        elif kind == "hr":
            out.append("——————\n\n")
        elif kind == "table_open":
            out.append("<pre>")
        elif kind == "table_close":
            _trim_trailing_newlines(out)
            out.append("</pre>\n\n")
        elif kind == "tr_close":
            out.append("\n")
        elif kind in ("th_open", "td_open") and out and not out[-1].endswith(("\n", "<pre>")):
            out.append(" | ")
        elif kind == "html_block":
            out.append(_esc(token.content))
    return "".join(out)


def _trim_trailing_newlines(out: list[str]) -> None:
    while out and out[-1].endswith("\n"):
        out[-1] = out[-1].rstrip("\n")
        if out[-1]:
            break
        out.pop()


_INLINE_MARKUP = {
    "softbreak": "\n", "hardbreak": "\n", "strong_open": "<b>", "strong_close": "</b>",
    "em_open": "<i>", "em_close": "</i>", "s_open": "<s>", "s_close": "</s>",
}


def _inline(children: list[Token]) -> str:
    out: list[str] = []
    links: list[bool] = []  # per open link: whether its <a> was written (unsafe targets become plain text)
    for token in children:
        kind = token.type
        if kind == "text":
            out.append(_esc(token.content))
        elif kind == "code_inline":
            out.append(f"<code>{_esc(token.content)}</code>")
        elif kind in _INLINE_MARKUP:
            out.append(_INLINE_MARKUP[kind])
        elif kind == "link_open":
            href = str(token.attrGet("href") or "")
            links.append(_safe_href(href))
            if links[-1]:
                out.append(f'<a href="{html.escape(href, quote=True)}">')
        elif kind == "link_close":
            if links.pop():
                out.append("</a>")
        elif kind == "image":
            label = token.content or "image"
            out.append(f"{_esc(label)} ({_esc(str(token.attrGet('src') or ''))})")
        elif kind == "html_inline":
            out.append(_esc(token.content))
    return "".join(out)


def _safe_href(href: str) -> bool:
    return href.lower().startswith(("http://", "https://", "tg://", "mailto:"))

