"""The configuration models: camelCase in JSON, snake_case in Python (both accepted on input)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
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
    # "shared": one MEMORY.md/HISTORY.md for every conversation (upstream); "conversation": each conversation
    # its own, so what one person said never reaches another's prompt. "" = conversation in distributed
    # mode (many people), shared in local mode.
    memory_scope: Literal["", "shared", "conversation"] = ""
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


API_CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class ApiChannelConfig(ChannelBase):
    # Its errors do not echo the input (it holds keys) when validated alone; inside Config, Config's setting rules.
    model_config = ConfigDict(hide_input_in_errors=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8900, ge=0, le=65535)
    api_key: str = ""  # one client, named "api"; several clients: `keys`
    # Keys per client: key -> client name. Each client's session_ids are its own (namespaced by its name);
    # allowFrom lists client names.
    keys: dict[str, str] = Field(default_factory=dict)
    # Failed authentications allowed per client address per minute; beyond that 429 until the minute passes.
    auth_failures_per_minute: int = Field(default=10, gt=0)
    timeout_s: float = Field(default=120.0, gt=0)
    # Requests served at once; more get 503 at once instead of queueing behind the agent.
    max_connections: int = Field(default=1024, gt=0)
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)

    @field_validator("keys")
    @classmethod
    def _check_keys(cls, keys: dict[str, str]) -> dict[str, str]:
        """Entries are named by client and position, never by key: the error may reach a log."""
        for position, (key, client) in enumerate(keys.items(), start=1):
            if not API_CLIENT_NAME.fullmatch(client):
                raise ValueError(
                    f"entry {position}: client name {client!r} must match {API_CLIENT_NAME.pattern}"
                    " (a letter or digit, then letters, digits, '_', '.', '-'; at most 64)"
                )
            if not key.strip():
                raise ValueError(f"entry {position} (client {client!r}): the key is empty")
            if any(ch.isspace() for ch in key):
                raise ValueError(f"entry {position} (client {client!r}): the key must not contain whitespace")
        return keys

    @model_validator(mode="after")
    def _check_api_key_not_in_keys(self) -> ApiChannelConfig:
        client = self.keys.get(self.api_key) if self.api_key else None
        if client is not None and client != "api":
            raise ValueError(
                f"channels.api.apiKey is also the key of client {client!r} in channels.api.keys; give each one key"
            )
        return self


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
    provider: str = "brave"
    api_key: str = ""
    max_results: int = Field(default=5, gt=0, le=20)


class WebFetchConfig(Base):
    """Our caps on what `web_fetch` reads (upstream's `useJinaReader` is accepted and not used)."""

    max_bytes: int = Field(default=2 * 1024 * 1024, gt=0)
    timeout_s: float = Field(default=30.0, gt=0)
    max_redirects: int = Field(default=5, ge=0, le=20)


class WebToolsConfig(Base):
    enable: bool = True
    proxy: str | None = None
    search: WebSearchConfig = Field(default_factory=WebSearchConfig)
    fetch: WebFetchConfig = Field(default_factory=WebFetchConfig)


class ExecToolConfig(Base):
    """Upstream's keys (`enable` ... `denyPatterns`), plus the sandbox's network and the resource limits.

    `sandbox`: "bwrap" runs every command under bubblewrap; "none" never; "" (upstream's default) means
    bubblewrap in distributed mode when it is installed, none in local mode."""

    enable: bool = True
    timeout: int = Field(default=60, gt=0)
    path_prepend: str = ""
    path_append: str = ""
    sandbox: Literal["", "bwrap", "none"] = ""
    sandbox_ro_binds: list[str] = Field(default_factory=list)
    sandbox_rw_binds: list[str] = Field(default_factory=list)
    sandbox_network: bool = False
    allowed_env_keys: list[str] = Field(default_factory=list)
    allow_patterns: list[str] = Field(default_factory=list)
    deny_patterns: list[str] = Field(default_factory=list)
    max_output_chars: int = Field(default=10_000, gt=0)
    cpu_seconds: int = Field(default=60, gt=0)
    memory_mb: int = Field(default=1024, gt=0)
    file_size_mb: int = Field(default=100, gt=0)
    max_processes: int = Field(default=64, gt=0)


class FileToolsConfig(Base):
    enable: bool = True


class MessageToolConfig(Base):
    # The message tool sends only to the chat of the turn it serves; true lets the model name any chat the
    # channels reach (upstream's behaviour: one person could make the bot write to another).
    allow_other_chats: bool = False


class ToolsConfig(Base):
    web: WebToolsConfig = Field(default_factory=WebToolsConfig)
    exec: ExecToolConfig = Field(default_factory=ExecToolConfig)
    file: FileToolsConfig = Field(default_factory=FileToolsConfig)
    message: MessageToolConfig = Field(default_factory=MessageToolConfig)
    restrict_to_workspace: bool = False
    # "conversation": each conversation works in its own folder (`<workspace>/conversations/<session>/`), the
    # tools' whole world for its turns (the operator's instructions and skills stay visible, read-only); its cron
    # jobs are its own. "shared": one workspace for everybody (upstream). "" = conversation in distributed mode
    # (many people), shared in local mode (settled when the agent is built, `toolset.agent_tools_config`).
    isolation: Literal["", "conversation", "shared"] = ""
    # Addresses web_fetch may reach although they are loopback, private, link-local or metadata: CIDR ranges.
    ssrf_whitelist: list[str] = Field(default_factory=list)
    # The operator's instructions in the workspace (AGENTS.md, SOUL.md, USER.md, TOOLS.md, IDENTITY.md,
    # HEARTBEAT.md, skills/): readable by tools, never changed by them, so one end user cannot rewrite what
    # every other user's agent is told. Unset: on in distributed mode (many people), off in local mode
    # (decided when the agent is built, `toolset.agent_tools_config`, so a saved config keeps it unset).
    read_only_instructions: bool | None = None


# ---------------------------------------------------------------- bus and sessions
class LockConfig(Base):
    enabled: bool = True
    ttl_ms: int = Field(default=120_000, ge=1000)


class WorkerConfig(Base):
    """How `nanobot worker` (and the gateway's embedded worker) runs Celery.

    threads (the default): one process runs `concurrency` turns at once (100 if unset) on one shared event loop;
    a turn waiting on the LLM costs a coroutine and a parked thread, not a process. prefork: one process per turn
    at a time, `autoscale` MAX,MIN of them (the card's `celery -A nanobot_celery worker --autoscale=10,2`)."""

    pool: Literal["prefork", "threads", "solo"] = "threads"
    autoscale: str | None = Field(default="10,2", pattern=r"^\d+,\d+$")  # prefork only
    concurrency: int | None = Field(default=None, gt=0)
    # Each worker's main process serves /metrics (its pool added up) and /health here; 0 turns it off.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9810, ge=0, le=65535)


class BusConfig(Base):
    backend: Literal["local", "celery"] = "local"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Turn queues. One (the default) serves waiting conversations first come, first served; several spread the
    # doorbells over queues that workers read in turn (dedicated workers with -Q), at the cost of that order.
    shards: int = Field(default=1, gt=0, le=1024)
    run_embedded_worker: bool = True
    outbound: Literal["stream", "pubsub"] = "stream"
    lock: LockConfig = Field(default_factory=LockConfig)
    key_prefix: str = Field(default="nanobot", min_length=1)
    sweep_interval_s: float = Field(default=5.0, gt=0)
    visibility_timeout_s: int = Field(default=3600, gt=0)
    dedup_ttl_s: int = Field(default=7 * 24 * 3600, gt=0)
    gateway_name: str = Field(default="gateway", min_length=1)
    # A message whose turn failed (an exception, or its worker died) this many times goes to the dead letters.
    max_deliveries: int = Field(default=3, gt=0)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)


class SessionsConfig(Base):
    backend: Literal["file", "redis"] = "file"


class LoggingConfig(Base):
    """Log lines of the gateway, workers and CLI; $NANOBOT_LOG_FORMAT and $NANOBOT_LOG_LEVEL win over these."""

    format: Literal["text", "json"] = "text"
    level: str = "INFO"


# ---------------------------------------------------------------- fair limits per sender
class LimitsConfig(Base):
    """Fair limits per sender (see `nanobot.admission`). A key left unset (null) is off in local mode and for the
    API channel (one client often carries many people); in distributed mode the chat channels get its default
    (20 messages a minute with bursts of 5, 20 waiting per conversation, no token budget). A key that is set
    applies to every channel, in both modes. 0 turns a limit off."""

    messages_per_minute: int | None = Field(default=None, ge=0)
    burst: int | None = Field(default=None, gt=0)
    max_queued_per_conversation: int | None = Field(default=None, ge=0)
    llm_tokens_per_day: int | None = Field(default=None, ge=0)


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
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)

    @property
    def workspace_path(self) -> Path:
        return Path(self.agents.defaults.workspace).expanduser()

    @property
    def memory_scope(self) -> Literal["shared", "conversation"]:
        """`agents.defaults.memoryScope`, its default following `isolation`: people kept apart keep their memory
        apart too."""
        scope = self.agents.defaults.memory_scope
        if scope:
            return scope
        return "conversation" if self.isolation == "conversation" else "shared"

    @property
    def isolation(self) -> Literal["conversation", "shared"]:
        """`tools.isolation`, its default decided by the bus: many people share a distributed deployment."""
        setting = self.tools.isolation
        if setting:
            return setting
        return "conversation" if self.bus.backend == "celery" else "shared"

    def to_json_dict(self) -> dict:
        """The config as it is written to config.json (camelCase)."""
        return self.model_dump(mode="json", by_alias=True)
