"""The WhatsApp Cloud API transport: Meta's signed webhooks in, the Graph API out.

Webhook, served by the gateway's HTTP server:

* `GET /whatsapp`: the subscription handshake. `hub.mode=subscribe` and `hub.verify_token` equal to `verifyToken`
  are answered with `hub.challenge` (text/plain); anything else with 403.
* `POST /whatsapp`: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body keyed with appSecret>` is checked
  first (missing: 401, wrong: 403). A good delivery is answered 200 at once; its messages are then handled in the
  background, in order per sender, each WhatsApp message id once (Meta delivers again when unsure).

Graph API calls, all with `Authorization: Bearer <accessToken>`, retried with backoff on 429, 5xx and connection
errors (`Retry-After` honoured):

* `POST {apiBase}/{phoneNumberId}/messages`: text (split at 4096 characters) and media by id;
* `POST {apiBase}/{phoneNumberId}/media`: upload (multipart `file`, `type`, `messaging_product`);
* `GET {apiBase}/{media-id}`: metadata with a short-lived `url`, itself fetched with the same Bearer token.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import mimetypes
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from aiohttp import web

from nanobot.bus.events import OutboundMessage
from nanobot.channels.dedup import RecentIds
from nanobot.channels.whatsapp import Incoming
from nanobot.config.schema import WhatsAppCloudConfig

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/whatsapp"
SIGNATURE_HEADER = "X-Hub-Signature-256"
TEXT_LIMIT = 4096  # WhatsApp's limit for a text message body
MEDIA_KINDS = ("image", "audio", "video", "document")
RETRY_AFTER_CAP_S = 60.0
SHUTDOWN_GRACE_S = 5.0  # how long stop() lets deliveries already accepted finish publishing

# The media types WhatsApp sends as image / video / audio; any other file goes as a document.
_IMAGE_TYPES = {"image/jpeg", "image/png"}
_VIDEO_TYPES = {"video/mp4", "video/3gpp"}
_AUDIO_TYPES = {"audio/aac", "audio/amr", "audio/mpeg", "audio/mp4", "audio/ogg"}

OnMessage = Callable[[Incoming], Awaitable[None]]


class WhatsAppApiError(RuntimeError):
    """A Graph API call that failed for good; `status` is 0 when no HTTP answer came back."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------- helpers
def split_text(text: str, limit: int = TEXT_LIMIT) -> list[str]:
    """Chunks of at most `limit` characters, cut at a paragraph, else a line, else a word boundary when one lies in
    the second half of the chunk (else hard at `limit`); the separator at a cut is dropped, blank chunks too."""
    chunks: list[str] = []
    rest = text
    while len(rest) > limit:
        end, resume = _cut(rest, limit)
        chunks.append(rest[:end])
        rest = rest[resume:]
    chunks.append(rest)
    return [chunk for chunk in chunks if chunk.strip()]


def _cut(text: str, limit: int) -> tuple[int, int]:
    """Where the first chunk of `text` ends and where the rest starts."""
    for separator in ("\n\n", "\n", " "):
        position = text.rfind(separator, 0, limit + len(separator))
        if position >= limit // 2:
            return position, position + len(separator)
    return limit, limit


def valid_signature(secret: str, header: str, body: bytes) -> bool:
    """Whether `header` (`sha256=<hex>`) is the HMAC-SHA256 of `body` keyed with `secret`; compared in constant
    time."""
    scheme, _, digest = header.strip().partition("=")
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return scheme.lower() == "sha256" and hmac.compare_digest(digest.lower().encode(), expected.encode())


def media_kind(mime: str) -> str:
    """How a file of this media type is sent: image, video, audio or document."""
    if mime in _IMAGE_TYPES:
        return "image"
    if mime in _VIDEO_TYPES:
        return "video"
    if mime in _AUDIO_TYPES:
        return "audio"
    return "document"


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _retryable(status: int) -> bool:
    return status == 429 or status >= 500


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return None  # absent, or an HTTP date: use our own backoff


def _error_text(response: httpx.Response) -> str:
    """`HTTP <status>` plus the Graph error's message and code when the body has them."""
    try:
        error = _dict(_dict(response.json()).get("error"))
    except ValueError:
        error = {}
    detail = f": {error.get('message')} (code {error.get('code')})" if error else ""
    return f"HTTP {response.status_code}{detail}"


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


# ---------------------------------------------------------------- transport
class CloudTransport:
    kind = "cloud"
    attempts = 4  # tries per Graph API call
    retry_base_s = 0.5  # first pause between tries, doubled each time
    retry_max_s = 8.0

    def __init__(self, config: WhatsAppCloudConfig, media_dir: Path, on_message: OnMessage) -> None:
        self.config = config
        self.media_dir = media_dir
        self._on_message = on_message
        self._base = config.api_base.rstrip("/")
        self._recent = RecentIds(maxlen=10_000, ttl_s=86_400.0, channel="whatsapp")
        self._client: httpx.AsyncClient | None = None
        self._stopped = asyncio.Event()
        self._tails: dict[str, asyncio.Task[None]] = {}  # sender -> the task of its latest message

    def routes(self) -> list[web.RouteDef]:
        return [web.get(WEBHOOK_PATH, self._verify), web.post(WEBHOOK_PATH, self._receive)]

    # ------------------------------------------------------------ lifecycle
    async def run(self) -> None:
        """Hold the Graph API client until `close()`; the webhook itself is served by the gateway. Runs once."""
        if self._client is not None:
            raise RuntimeError("whatsapp cloud transport already running")
        self._client = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {self.config.access_token}"},
            timeout=httpx.Timeout(30.0, connect=10.0),
        )
        log.info(
            "whatsapp cloud: webhook %s on the gateway, phone number id %s", WEBHOOK_PATH, self.config.phone_number_id
        )
        if not self.config.app_secret:
            log.error("whatsapp cloud: appSecret is not set, so every webhook delivery will be refused")
        try:
            await self._stopped.wait()
        finally:
            await self._shutdown()

    async def close(self) -> None:
        self._stopped.set()
        await self._shutdown()

    async def _shutdown(self) -> None:
        pending = list(self._tails.values())
        if pending:
            _done, late = await asyncio.wait(pending, timeout=SHUTDOWN_GRACE_S)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    @property
    def accepting(self) -> bool:
        return self._client is not None and not self._stopped.is_set()

    # ------------------------------------------------------------ webhook
    async def _verify(self, request: web.Request) -> web.Response:
        query = request.query
        expected = self.config.verify_token
        supplied = query.get("hub.verify_token", "")
        if (
            query.get("hub.mode") == "subscribe"
            and expected
            and hmac.compare_digest(supplied.encode(), expected.encode())
        ):
            log.info("whatsapp cloud: webhook subscription verified")
            return web.Response(text=query.get("hub.challenge", ""), content_type="text/plain")
        log.warning("whatsapp cloud: webhook verification refused (mode=%s)", query.get("hub.mode"))
        return web.Response(status=403, text="verification failed")

    async def _receive(self, request: web.Request) -> web.Response:
        if not self.accepting:
            return web.Response(status=503, text="not running")  # Meta delivers it again later
        body = await request.read()
        refusal = self._signature_refusal(request.headers.get(SIGNATURE_HEADER), body)
        if refusal is not None:
            return web.Response(status=refusal, text="invalid signature")
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            log.warning("whatsapp cloud: signed webhook whose body is not a JSON object; answered 400")
            return web.Response(status=400, text="malformed JSON")
        for entry in _dicts(payload.get("entry")):
            for change in _dicts(entry.get("changes")):
                if change.get("field") == "messages":
                    self._accept(_dict(change.get("value")))
        return web.Response(text="OK")

    def _signature_refusal(self, header: str | None, body: bytes) -> int | None:
        """None for a good signature, else the status to answer."""
        if not self.config.app_secret:
            log.error("whatsapp cloud: webhook refused: appSecret is not set, so its signature cannot be checked")
            return 403
        if not header:
            log.warning("whatsapp cloud: webhook without %s refused", SIGNATURE_HEADER)
            return 401
        if not valid_signature(self.config.app_secret, header, body):
            log.warning("whatsapp cloud: webhook with a wrong %s refused", SIGNATURE_HEADER)
            return 403
        return None

    def _accept(self, value: dict[str, Any]) -> None:
        """Schedule the new messages of one change; status callbacks (`statuses`) are ignored."""
        phone_number_id = str(_dict(value.get("metadata")).get("phone_number_id") or "")
        if phone_number_id and phone_number_id != self.config.phone_number_id:
            log.info("whatsapp cloud: delivery for phone number id %s (not ours) ignored", phone_number_id)
            return
        names = {str(c.get("wa_id")): _dict(c.get("profile")).get("name") for c in _dicts(value.get("contacts"))}
        for message in _dicts(value.get("messages")):
            wamid, number = str(message.get("id") or ""), str(message.get("from") or "")
            if not wamid or not number:
                log.warning("whatsapp cloud: message without id or sender ignored")
            elif self._recent.seen(wamid):
                log.info("whatsapp duplicate session=whatsapp:%s message_id=wa-%s dropped", number, wamid)
            else:
                self._schedule(number, message, names.get(number))

    def _schedule(self, number: str, message: dict[str, Any], name: str | None) -> None:
        task = asyncio.create_task(self._handle(number, message, name, self._tails.get(number)))
        self._tails[number] = task
        task.add_done_callback(lambda done: self._tails.pop(number) if self._tails.get(number) is done else None)

    async def _handle(
        self, number: str, message: dict[str, Any], name: str | None, previous: asyncio.Task[None] | None
    ) -> None:
        if previous is not None:
            await asyncio.wait([previous])  # the sender's earlier message first
        wamid = str(message["id"])
        try:
            content, media = await self._describe(number, wamid, message)
            metadata = {"message_id": wamid, "timestamp": message.get("timestamp"), "type": message.get("type")}
            if name:
                metadata["name"] = name
            incoming = Incoming(
                wa_id=wamid, sender_id=number, chat_id=number, content=content, media=media, metadata=metadata
            )
            await self._on_message(incoming)
        except Exception:
            log.exception("whatsapp inbound session=whatsapp:%s message_id=wa-%s not published", number, wamid)

    async def _describe(self, number: str, wamid: str, message: dict[str, Any]) -> tuple[str, list[str]]:
        """The text the agent gets and the files saved for it."""
        kind = str(message.get("type") or "unknown")
        if kind == "text":
            return str(_dict(message.get("text")).get("body") or ""), []
        if kind not in MEDIA_KINDS:
            return f"[{kind} message]", []
        info = _dict(message.get(kind))
        label = "voice" if kind == "audio" and info.get("voice") else kind
        path = await self._fetch_media(number, wamid, info)
        tag = f"[{label}: {path}]" if path is not None else f"[{label}: could not be downloaded]"
        caption = str(info.get("caption") or "")
        return (f"{tag}\n{caption}" if caption else tag), ([str(path)] if path is not None else [])

    async def _fetch_media(self, number: str, wamid: str, info: dict[str, Any]) -> Path | None:
        media_id = str(info.get("id") or "")
        try:
            if not media_id:
                raise WhatsAppApiError(0, "the message names no media id")
            metadata = _dict((await self._request("GET", f"{self._base}/{media_id}")).json())
            url = metadata.get("url")
            if not isinstance(url, str) or not url:
                raise WhatsAppApiError(0, "the media metadata has no url")
            data = (await self._request("GET", url)).content
            mime = str(info.get("mime_type") or metadata.get("mime_type") or "")
            path = self._media_path(media_id, mime, info.get("filename"))
            await asyncio.to_thread(_write_file, path, data)
        except (RuntimeError, httpx.HTTPError, ValueError, OSError) as exc:
            log.warning("whatsapp media of session=whatsapp:%s message_id=wa-%s not downloaded: %s", number, wamid, exc)
            return None
        return path

    def _media_path(self, media_id: str, mime: str, filename: Any) -> Path:
        if isinstance(filename, str) and filename:
            suffix = Path(filename).suffix
        else:
            suffix = mimetypes.guess_extension(mime.split(";", 1)[0].strip()) or ""
        safe_id = re.sub(r"[^A-Za-z0-9_-]", "_", media_id)
        safe_suffix = re.sub(r"[^A-Za-z0-9.]", "", suffix)[:10]
        return self.media_dir / f"wa_{safe_id}{safe_suffix}"

    # ------------------------------------------------------------ outbound
    async def send(self, msg: OutboundMessage) -> None:
        for chunk in split_text(msg.content):
            await self._post_message(msg.chat_id, {"type": "text", "text": {"body": chunk}})
        for item in msg.media:
            await self._send_file(msg.chat_id, Path(item))

    async def _post_message(self, to: str, body: dict[str, Any]) -> None:
        payload = {"messaging_product": "whatsapp", "to": to, **body}
        await self._request("POST", f"{self._base}/{self.config.phone_number_id}/messages", json=payload)

    async def _send_file(self, to: str, path: Path) -> None:
        """Upload one file and send it by id; a file that cannot be read is skipped (logged), not retried."""
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except OSError as exc:
            log.warning("whatsapp attachment %s for session=whatsapp:%s skipped: %s", path.name, to, exc.strerror)
            return
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        upload = await self._request(
            "POST",
            f"{self._base}/{self.config.phone_number_id}/media",
            data={"messaging_product": "whatsapp", "type": mime},
            files={"file": (path.name, data, mime)},
        )
        try:
            media_id = str(upload.json()["id"])
        except (ValueError, KeyError, TypeError) as exc:
            raise WhatsAppApiError(upload.status_code, "the media upload answered no id") from exc
        kind = media_kind(mime)
        reference: dict[str, str] = {"id": media_id}
        if kind == "document":
            reference["filename"] = path.name
        await self._post_message(to, {"type": kind, kind: reference})

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One Graph API call, retried on 429, 5xx and connection errors; raises `WhatsAppApiError` when it failed."""
        client = self._client
        if client is None:
            raise WhatsAppApiError(0, "the whatsapp cloud transport is not running")
        where = f"{method} {urlsplit(url).path}"  # never the query: download urls carry a hash
        delay = self.retry_base_s
        for attempt in range(1, self.attempts + 1):
            try:
                response = await client.request(method, url, **kwargs)
            except httpx.TransportError as exc:
                status, problem, wait = 0, type(exc).__name__, None
            else:
                if response.is_success:
                    return response
                status, problem, wait = response.status_code, _error_text(response), _retry_after(response)
                if not _retryable(status):
                    raise WhatsAppApiError(status, f"{where}: {problem}")
            if attempt == self.attempts:
                break
            pause = min(delay if wait is None else wait, RETRY_AFTER_CAP_S)
            log.warning(
                "whatsapp cloud: %s failed (%s), try %d/%d; again in %.1fs",
                where,
                problem,
                attempt,
                self.attempts,
                pause,
            )
            await asyncio.sleep(pause)
            delay = min(delay * 2, self.retry_max_s)
        raise WhatsAppApiError(status, f"{where}: {problem} after {self.attempts} tries")
