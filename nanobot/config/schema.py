"""The configuration models: camelCase in JSON, snake_case in Python (both accepted on input)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class Base(BaseModel):
    """camelCase aliases, snake_case accepted, unknown keys ignored (the loader warns about them)."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", coerce_numbers_to_str=True
    )


# ---------------------------------------------------------------- agents
class AgentDefaults(Base):
    workspace: str = "~/.nanobot/workspace"
    model: str = "anthropic/claude-opus-4-5"
    provider: str = "auto"
    max_tokens: int = Field(default=8192, gt=0)
    temperature: float = Field(default=0.1, ge=0.0, le=2.0)
    max_tool_iterations: int = Field(default=40, gt=0)
    memory_window: int = Field(default=100, gt=0)
    max_concurrent_turns: int | None = Field(default=None, gt=0)
    llm_timeout_s: float = Field(default=120.0, gt=0)
    llm_max_retries: int = Field(default=3, ge=0)
    llm_retry_base_delay_s: float = Field(default=1.0, ge=0)


class AgentsConfig(Base):
    defaults: AgentDefaults = Field(default_factory=AgentDefaults)


# ---------------------------------------------------------------- channels
class ChannelBase(Base):
    enabled: bool = False
    allow_from: list[str] = Field(default_factory=list)


class ApiChannelConfig(ChannelBase):
    host: str = "127.0.0.1"
    port: int = Field(default=8900, ge=0, le=65535)
    api_key: str = ""
    timeout_s: float = Field(default=120.0, gt=0)
    # Requests served at once; more get 503 at once instead of queueing behind the agent.
    max_connections: int = Field(default=1024, gt=0)
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)


class TelegramConfig(ChannelBase):
    """Upstream nanobot's keys, plus `apiBase` (a self-hosted Bot API server, or a test's fake one)."""

    token: str = ""
    proxy: str | None = None
    reply_to_message: bool = False
    group_policy: Literal["mention", "open"] = "mention"
    mode: Literal["polling", "webhook"] = "polling"
    webhook_url: str = ""
    webhook_listen_host: str = "127.0.0.1"
    webhook_listen_port: int = Field(default=8081, ge=0, le=65535)
    webhook_path: str = Field(default="/telegram", pattern=r"^/")
    webhook_secret_token: str = Field(default="", pattern=r"^[A-Za-z0-9_-]{0,256}$")
    webhook_max_connections: int = Field(default=4, ge=1, le=100)
    react_emoji: str = "👀"
    # Accepted for upstream configs; replies are sent whole (the provider does not stream tokens).
    streaming: bool = True
    connection_pool_size: int = Field(default=32, gt=0)
    pool_timeout: float = Field(default=5.0, gt=0)
    api_base: str = "https://api.telegram.org"
    # Polling with several gateways: one holds this lease (seconds) and polls; another takes over when it dies.
    poll_lease_s: float = Field(default=15.0, ge=1.0)


class WhatsAppCloudConfig(Base):
    """The official WhatsApp Cloud API (Meta's Graph API)."""

    phone_number_id: str = ""
    access_token: str = ""
    app_secret: str = ""
    verify_token: str = ""
    api_base: str = "https://graph.facebook.com/v21.0"

    @property
    def configured(self) -> bool:
        return bool(self.phone_number_id and self.access_token)


class WhatsAppConfig(ChannelBase):
    """Two transports: `cloud` when it is configured, else upstream's bridge (`bridgeUrl`, `bridgeToken`)."""

    bridge_url: str = "ws://localhost:3001"
    bridge_token: str = ""
    cloud: WhatsAppCloudConfig = Field(default_factory=WhatsAppCloudConfig)


class ChannelsConfig(Base):
    send_progress: bool = True
    send_tool_hints: bool = False
    transcription_provider: str = "groq"  # upstream's older key; `transcription.provider` wins
    api: ApiChannelConfig = Field(default_factory=ApiChannelConfig)
    telegram: TelegramConfig = Field(default_factory=TelegramConfig)
    whatsapp: WhatsAppConfig = Field(default_factory=WhatsAppConfig)


class TranscriptionConfig(Base):
    """Voice messages turned into text (upstream's top-level block): an OpenAI-compatible audio endpoint."""

    enabled: bool = True
    provider: str | None = None  # groq (default), openai, or any provider with an OpenAI-compatible audio API
    model: str | None = None  # default: whisper-large-v3 on groq, whisper-1 elsewhere
    language: str | None = None
    max_upload_mb: int = Field(default=25, gt=0)


# ---------------------------------------------------------------- providers
class ProviderConfig(Base):
    api_key: str = ""
    api_base: str | None = None
    extra_headers: dict[str, str] | None = None


class ProvidersConfig(Base):
    custom: ProviderConfig = Field(default_factory=ProviderConfig)
    openai: ProviderConfig = Field(default_factory=ProviderConfig)
    anthropic: ProviderConfig = Field(default_factory=ProviderConfig)
    openrouter: ProviderConfig = Field(default_factory=ProviderConfig)
    deepseek: ProviderConfig = Field(default_factory=ProviderConfig)
    groq: ProviderConfig = Field(default_factory=ProviderConfig)
    gemini: ProviderConfig = Field(default_factory=ProviderConfig)
    vllm: ProviderConfig = Field(default_factory=ProviderConfig)
    ollama: ProviderConfig = Field(default_factory=ProviderConfig)
    dashscope: ProviderConfig = Field(default_factory=ProviderConfig)
    moonshot: ProviderConfig = Field(default_factory=ProviderConfig)
    zhipu: ProviderConfig = Field(default_factory=ProviderConfig)
    minimax: ProviderConfig = Field(default_factory=ProviderConfig)
    siliconflow: ProviderConfig = Field(default_factory=ProviderConfig)
    aihubmix: ProviderConfig = Field(default_factory=ProviderConfig)


# ---------------------------------------------------------------- gateway
class HeartbeatConfig(Base):
    enabled: bool = True
    interval_s: int = Field(default=1800, gt=0)


class GatewayConfig(Base):
    """The gateway's own HTTP server: `/health` and the webhooks of push channels (WhatsApp Cloud)."""

    host: str = "127.0.0.1"
    port: int = Field(default=18790, ge=0, le=65535)
    heartbeat: HeartbeatConfig = Field(default_factory=HeartbeatConfig)


# ---------------------------------------------------------------- tools
class WebSearchConfig(Base):
    api_key: str = ""
    max_results: int = Field(default=5, gt=0, le=20)


class WebToolsConfig(Base):
    search: WebSearchConfig = Field(default_factory=WebSearchConfig)


class ExecToolConfig(Base):
    timeout: int = Field(default=60, gt=0)


class ToolsConfig(Base):
    web: WebToolsConfig = Field(default_factory=WebToolsConfig)
    exec: ExecToolConfig = Field(default_factory=ExecToolConfig)
    restrict_to_workspace: bool = False


# ---------------------------------------------------------------- bus and sessions
class LockConfig(Base):
    enabled: bool = True
    ttl_ms: int = Field(default=120_000, ge=1000)


class WorkerConfig(Base):
    """How `nanobot worker` (and the gateway's embedded worker) runs Celery."""

    pool: Literal["prefork", "threads", "solo"] = "prefork"
    autoscale: str | None = Field(default="10,2", pattern=r"^\d+,\d+$")
    concurrency: int | None = Field(default=None, gt=0)


class BusConfig(Base):
    backend: Literal["local", "celery"] = "local"
    redis_url: str = "redis://127.0.0.1:6379/0"
    shards: int = Field(default=16, gt=0, le=1024)
    run_embedded_worker: bool = True
    outbound: Literal["stream", "pubsub"] = "stream"
    lock: LockConfig = Field(default_factory=LockConfig)
    key_prefix: str = Field(default="nanobot", min_length=1)
    sweep_interval_s: float = Field(default=5.0, gt=0)
    visibility_timeout_s: int = Field(default=3600, gt=0)
    dedup_ttl_s: int = Field(default=7 * 24 * 3600, gt=0)
    gateway_name: str = Field(default="gateway", min_length=1)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)


class SessionsConfig(Base):
    backend: Literal["file", "redis"] = "file"


# ---------------------------------------------------------------- root
class Config(Base):
    agents: AgentsConfig = Field(default_factory=AgentsConfig)
    channels: ChannelsConfig = Field(default_factory=ChannelsConfig)
    transcription: TranscriptionConfig = Field(default_factory=TranscriptionConfig)
    providers: ProvidersConfig = Field(default_factory=ProvidersConfig)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    tools: ToolsConfig = Field(default_factory=ToolsConfig)
    bus: BusConfig = Field(default_factory=BusConfig)
    sessions: SessionsConfig = Field(default_factory=SessionsConfig)

    @property
    def workspace_path(self) -> Path:
        return Path(self.agents.defaults.workspace).expanduser()

    def to_json_dict(self) -> dict:
        """The config as it is written to config.json (camelCase)."""
        return self.model_dump(mode="json", by_alias=True)
