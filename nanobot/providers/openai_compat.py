"""One provider for every OpenAI-compatible endpoint, on the `openai` SDK, with its metrics (by provider name
and model, both from the config, so label values stay bounded)."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import ssl
import time
from typing import Any

import aiohttp
import httpx
import openai
from openai import AsyncOpenAI, DefaultAioHttpClient
from openai.types.chat import ChatCompletion

from nanobot.metrics.instruments import count_llm, count_llm_retry, count_tokens
from nanobot.providers.base import LLMProvider, LLMResponse, ToolCallRequest

log = logging.getLogger(__name__)

APOLOGY = "Sorry, I could not reach the language model just now ({reason}). Please try again in a moment."
MAX_RETRY_DELAY_S = 60.0  # no single wait before a retry is longer, Retry-After included


def _timed_out(exc: BaseException) -> bool:
    """A real timeout. The SDK's aiohttp transport reports every dropped connection (server disconnected, reset)
    as a connect timeout: the aiohttp error under it tells them apart."""
    if not isinstance(exc, openai.APITimeoutError):
        return False
    transport_error = getattr(exc.__cause__, "__cause__", None)
    dropped = isinstance(transport_error, aiohttp.ClientConnectionError)
    return not dropped or isinstance(transport_error, TimeoutError)


def outcome_of(exc: BaseException | None) -> str:
    """The `outcome` label of one request to the provider: ok, http_429, http_4xx, http_5xx, timeout,
    connection or error (anything else, e.g. a reply that does not parse)."""
    if exc is None:
        return "ok"
    if _timed_out(exc):
        return "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "connection"
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status == 429:
            return "http_429"
        if 400 <= status < 500:
            return "http_4xx"
        if status >= 500:
            return "http_5xx"
    return "error"


def retry_delay_s(attempt: int, base_s: float, hinted_s: float | None, jitter: float) -> float:
    """The wait before retry number `attempt + 1`: `base_s` doubled per attempt, times `jitter` (0.8..1.2),
    at least what the server asked for (Retry-After), never over MAX_RETRY_DELAY_S."""
    delay = base_s * (2 ** min(attempt, 32)) * jitter
    if hinted_s is not None:
        delay = max(delay, hinted_s)
    return min(delay, MAX_RETRY_DELAY_S)


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, openai.APIConnectionError):  # includes timeouts
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code == 429 or exc.status_code >= 500
    return False


def _reason(exc: Exception) -> str:
    if _timed_out(exc):
        return "timed out"
    if isinstance(exc, openai.APIConnectionError):
        return "connection failed"
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}"
    return type(exc).__name__


def _retry_after(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context per process for every provider client: loading the CA bundle costs ~25 ms of CPU,
    which each client would otherwise pay again (a Celery worker builds one in every pool child; the
    worker's main process makes this before forking, so the children inherit it)."""
    return httpx.create_ssl_context()


def warm_response_models() -> None:
    """Build the openai SDK's response models now (it defers that to the first reply, ~20 ms of CPU): a worker's
    main process calls this before forking, so no pool child pays it on its first turn."""
    from openai.types.chat import ChatCompletion

    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    message = {"role": "assistant", "content": "", "tool_calls": [call]}
    reply = {
        "id": "x", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    ChatCompletion.model_validate(reply)
    ChatCompletion.construct(**reply)  # the SDK builds replies this way (no validation), through other models


class OpenAICompatProvider(LLMProvider):
    """Chat completions with timeouts and retries (exponential backoff with jitter, at most `max_retries`, no
    wait over MAX_RETRY_DELAY_S) on 429, 5xx and connection errors. When it gives up it returns an `is_error`
    response holding an apology, so the person always gets an answer. Every HTTP attempt is counted and timed
    by outcome (`nanobot_llm_requests_total`), every retry and the tokens of every reply too."""

    def __init__(
        self,
        api_key: str,
        api_base: str,
        default_model: str,
        extra_headers: dict[str, str] | None = None,
        timeout_s: float = 120.0,
        max_retries: int = 3,
        retry_base_delay_s: float = 1.0,
        name: str = "openai-compatible",
    ) -> None:
        self.name = name
        self.default_model = default_model
        self.max_retries = max_retries
        self.retry_base_delay_s = retry_base_delay_s
        self._client = AsyncOpenAI(
            api_key=api_key or "no-key",
            base_url=api_base,
            default_headers=extra_headers or None,
            timeout=timeout_s,
            max_retries=0,  # retries are ours: logged, bounded, with an apology at the end
            # aiohttp under the SDK's client: measured 0.2-0.4 ms of CPU and up to 1 ms less per call than httpx's
            # own transport, which checks every pooled connection's socket before each request.
            http_client=DefaultAioHttpClient(timeout=timeout_s, verify=tls_context()),
        )

    def get_default_model(self) -> str:
        return self.default_model

    async def chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        model: str | None = None,
        max_tokens: int = 8192,
        temperature: float = 0.1,
    ) -> LLMResponse:
        kwargs: dict[str, Any] = {
            "model": model or self.default_model,
            "messages": messages,
            "max_tokens": max(1, max_tokens),
            "temperature": temperature,
        }
        if tools:
            kwargs["tools"] = tools
            kwargs["tool_choice"] = "auto"
        model_name = kwargs["model"]
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                # The documented raw `post` sends the body as it is: `chat.completions.create` would first walk
                # every message and tool schema through the SDK's type transform, which py-spy showed taking
                # half of a local gateway's CPU (the turn's overhead fell from 13.7 to 4.5 ms without it).
                completion = await self._client.post("/chat/completions", cast_to=ChatCompletion, body=kwargs)
                response = self._parse(completion)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                count_llm(self.name, model_name, outcome_of(exc), time.monotonic() - started)
                if not _retryable(exc) or attempt >= self.max_retries:
                    log.error(
                        "llm provider=%s model=%s failed after %d attempt(s): %s",
                        self.name, model_name, attempt + 1, _reason(exc),
                    )
                    return LLMResponse(content=APOLOGY.format(reason=_reason(exc)), finish_reason="error")
                delay = retry_delay_s(attempt, self.retry_base_delay_s, _retry_after(exc), 0.8 + 0.4 * random.random())
                attempt += 1
                count_llm_retry(self.name)
                log.warning(
                    "llm provider=%s %s; retry %d/%d in %.2fs",
                    self.name, _reason(exc), attempt, self.max_retries, delay,
                )
                await asyncio.sleep(delay)
                continue
            # A reply without choices is answered with an apology: count it as an error, not a success.
            count_llm(self.name, model_name, "error" if response.is_error else "ok", time.monotonic() - started)
            if response.usage:
                count_tokens(self.name, model_name, response.usage)
            return response

    @staticmethod
    def _parse(completion: Any) -> LLMResponse:
        if not completion.choices:
            return LLMResponse(content="", finish_reason="error")
        choice = completion.choices[0]
        message = choice.message
        calls: list[ToolCallRequest] = []
        for call in message.tool_calls or []:
            fn = getattr(call, "function", None)
            if fn is None:
                continue
            raw = fn.arguments or "{}"
            try:
                args: dict[str, Any] | str = json.loads(raw)
            except json.JSONDecodeError:
                args = raw
            calls.append(ToolCallRequest(id=call.id, name=fn.name, arguments=args))
        usage = completion.usage
        return LLMResponse(
            content=message.content,
            tool_calls=calls,
            finish_reason=choice.finish_reason or "stop",
            usage={
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
            }
            if usage
            else {},
        )

    async def close(self) -> None:
        await self._client.close()
