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


class TelegramConfig(ChannelBase):
    token: str = ""
    proxy: str | None = None
    reply_to_message: bool = False


class WhatsAppConfig(ChannelBase):
    bridge_url: str = "ws://localhost:3001"
    bridge_token: str = ""


class ChannelsConfig(Base):
    send_progress: bool = True
    send_tool_hints: bool = False
    api: ApiChannelConfig = Field(default_factory=ApiChannelConfig)
    telegram: TelegramConfig = Field(default_factory=TelegramConfig)
    whatsapp: WhatsAppConfig = Field(default_factory=WhatsAppConfig)


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
    host: str = "0.0.0.0"
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
