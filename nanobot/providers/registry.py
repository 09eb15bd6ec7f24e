"""The providers nanobot knows: their OpenAI-compatible endpoints and how a model name picks one."""

from __future__ import annotations

from dataclasses import dataclass

from nanobot.config.schema import Config, ProviderConfig


@dataclass(frozen=True)
class ProviderSpec:
    name: str
    keywords: tuple[str, ...]  # model-name fragments that select this provider under "auto"
    default_api_base: str | None
    gateway: bool = False  # routes many vendors' models: the model name is sent as given
    needs_key: bool = True


PROVIDERS: tuple[ProviderSpec, ...] = (
    ProviderSpec("custom", (), None),
    ProviderSpec("openrouter", ("openrouter",), "https://openrouter.ai/api/v1", gateway=True),
    ProviderSpec("aihubmix", ("aihubmix",), "https://aihubmix.com/v1", gateway=True),
    ProviderSpec("anthropic", ("anthropic", "claude"), "https://api.anthropic.com/v1/"),
    ProviderSpec("openai", ("openai", "gpt", "o1", "o3", "o4"), "https://api.openai.com/v1"),
    ProviderSpec("deepseek", ("deepseek",), "https://api.deepseek.com/v1"),
    ProviderSpec("groq", ("groq",), "https://api.groq.com/openai/v1"),
    ProviderSpec("gemini", ("gemini",), "https://generativelanguage.googleapis.com/v1beta/openai/"),
    ProviderSpec("dashscope", ("dashscope", "qwen"), "https://dashscope.aliyuncs.com/compatible-mode/v1"),
    ProviderSpec("moonshot", ("moonshot", "kimi"), "https://api.moonshot.ai/v1"),
    ProviderSpec("zhipu", ("zhipu", "glm"), "https://open.bigmodel.cn/api/paas/v4"),
    ProviderSpec("minimax", ("minimax",), "https://api.minimax.io/v1"),
    ProviderSpec("siliconflow", ("siliconflow",), "https://api.siliconflow.cn/v1", gateway=True),
    ProviderSpec("vllm", ("vllm",), "http://localhost:8000/v1", needs_key=False),
    ProviderSpec("ollama", ("ollama",), "http://localhost:11434/v1", needs_key=False),
)


def spec_for(name: str) -> ProviderSpec | None:
    return next((s for s in PROVIDERS if s.name == name), None)


@dataclass(frozen=True)
class ProviderChoice:
    spec: ProviderSpec
    config: ProviderConfig
    api_base: str
    model: str  # the model name to send to this provider


class NoProviderError(Exception):
    """No configured provider can serve the model; the message says what to set."""


def _is_configured(spec: ProviderSpec, cfg: ProviderConfig) -> bool:
    if spec.name == "custom":
        return bool(cfg.api_base)
    return bool(cfg.api_key) or (not spec.needs_key and bool(cfg.api_base))


def _wire_model(spec: ProviderSpec, model: str) -> str:
    """Direct providers get the model without their own `name/` prefix; gateways get it as given."""
    if spec.gateway or spec.name == "custom":
        return model
    prefix, _, rest = model.partition("/")
    return rest if rest and prefix.lower() == spec.name else model


def select_provider(config: Config, model: str | None = None) -> ProviderChoice:
    """Pick the provider like nanobot does.

    `agents.defaults.provider` naming a provider uses it, with the model name as given. `"auto"`
    picks by the model's `vendor/` prefix, then by a keyword in the model name, among providers
    that have a key (or an apiBase for local servers), then falls back to the first configured one.
    """
    model = model or config.agents.defaults.model
    wanted = config.agents.defaults.provider
    providers = config.providers

    def choice(spec: ProviderSpec) -> ProviderChoice:
        cfg: ProviderConfig = getattr(providers, spec.name)
        base = cfg.api_base or spec.default_api_base
        if not base:
            raise NoProviderError(f"providers.{spec.name}.apiBase is required")
        wire = model if wanted == spec.name else _wire_model(spec, model)
        return ProviderChoice(spec, cfg, base, wire)

    if wanted and wanted != "auto":
        spec = spec_for(wanted)
        if spec is None:
            known = ", ".join(s.name for s in PROVIDERS)
            raise NoProviderError(f"agents.defaults.provider: unknown provider {wanted!r} (known: {known}, auto)")
        return choice(spec)

    configured = [s for s in PROVIDERS if _is_configured(s, getattr(providers, s.name))]
    lowered = model.lower()
    prefix = lowered.split("/", 1)[0] if "/" in lowered else ""
    for spec in configured:
        if prefix and prefix == spec.name:
            return choice(spec)
    for spec in configured:
        if any(k in lowered for k in spec.keywords):
            return choice(spec)
    # A gateway can serve any vendor's model; then anything configured.
    for spec in configured:
        if spec.gateway:
            return choice(spec)
    if configured:
        return choice(configured[0])
    raise NoProviderError(
        f"no provider configured for model {model!r}: set providers.<name>.apiKey "
        "(or providers.custom.apiBase) in the config"
    )
