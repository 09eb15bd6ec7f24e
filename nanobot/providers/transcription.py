"""Voice messages to text through an OpenAI-compatible audio endpoint (Groq's Whisper by default).

Configured by upstream's `transcription` block (`provider`, `model`, `language`), falling back to
`channels.transcriptionProvider`, then "groq"; the provider's key and endpoint come from `providers`.
Without a key for that provider there is no transcriber, and channels say so in the message instead.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from openai import AsyncOpenAI, DefaultAsyncHttpxClient

from nanobot.config.schema import Config
from nanobot.providers.openai_compat import tls_context
from nanobot.providers.registry import spec_for

log = logging.getLogger(__name__)

DEFAULT_MODELS = {"groq": "whisper-large-v3"}
FALLBACK_MODEL = "whisper-1"


class Transcriber:
    def __init__(self, api_key: str, api_base: str, model: str, language: str | None, max_bytes: int) -> None:
        self.model = model
        self.language = language
        self.max_bytes = max_bytes
        self._client = AsyncOpenAI(
            api_key=api_key, base_url=api_base, max_retries=2,
            http_client=DefaultAsyncHttpxClient(timeout=120.0, verify=tls_context()),
        )

    async def transcribe(self, path: Path) -> str:
        """The text spoken in the file; raises ValueError for a file over the size cap, and the SDK's errors."""
        data = await asyncio.to_thread(path.read_bytes)
        if len(data) > self.max_bytes:
            raise ValueError(f"audio file of {len(data)} bytes is over the {self.max_bytes}-byte cap")
        options = {"language": self.language} if self.language else {}
        result = await self._client.audio.transcriptions.create(model=self.model, file=(path.name, data), **options)
        return result.text.strip()

    async def close(self) -> None:
        await self._client.close()


def transcriber_from_config(config: Config) -> Transcriber | None:
    settings = config.transcription
    if not settings.enabled:
        return None
    name = settings.provider or config.channels.transcription_provider or "groq"
    provider = getattr(config.providers, name, None)
    spec = spec_for(name)
    api_base = (provider.api_base if provider else None) or (spec.default_api_base if spec else None)
    if provider is None or not provider.api_key or not api_base:
        log.info("voice transcription off: providers.%s has no apiKey (or no apiBase)", name)
        return None
    model = settings.model or DEFAULT_MODELS.get(name, FALLBACK_MODEL)
    return Transcriber(provider.api_key, api_base, model, settings.language, settings.max_upload_mb * 1024 * 1024)
