"""Finding, reading, validating and writing config.json."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.alias_generators import to_camel, to_snake

from nanobot.config.schema import Config

log = logging.getLogger(__name__)

ENV_PREFIX = "NANOBOT_"
ENV_CONFIG_PATH = "NANOBOT_CONFIG"
# Variables with the prefix that are not config overrides.
_NOT_OVERRIDES = {ENV_CONFIG_PATH, "NANOBOT_LOG_LEVEL", "NANOBOT_LOG_FORMAT"}


class ConfigError(Exception):
    """A config file that cannot be used; the message names the file, the key and what was expected."""


def default_config_path() -> Path:
    return Path("~/.nanobot/config.json").expanduser()


def config_path(explicit: str | Path | None = None) -> Path:
    """The config file in use: `--config`, else $NANOBOT_CONFIG, else ~/.nanobot/config.json."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get(ENV_CONFIG_PATH):
        return Path(os.environ[ENV_CONFIG_PATH]).expanduser()
    return default_config_path()


def data_dir(path: Path | None = None) -> Path:
    """nanobot's own data (cron jobs, ...) lives beside the config file."""
    return (path or config_path()).parent


def cron_store_path() -> Path:
    return data_dir() / "cron" / "jobs.json"


def load_config(path: str | Path | None = None, *, env: dict[str, str] | None = None) -> Config:
    """Read the config file (a missing file means defaults), apply env overrides, validate."""
    file = config_path(path)
    raw: dict[str, Any] = {}
    if file.exists():
        try:
            raw = json.loads(file.read_text(encoding="utf-8") or "{}")
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{file}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{file}: expected a JSON object at the top level, got {type(raw).__name__}")
    raw = _without_nulls(raw)
    _adopt_upstream_api_block(raw)
    unknown = unknown_keys(Config, raw)
    if unknown:
        log.warning("config %s: ignoring unknown keys: %s", file, ", ".join(unknown))
    apply_env_overrides(raw, os.environ if env is None else env)
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(file, exc)) from exc


def _without_nulls(data: Any) -> Any:
    """Upstream 0.3.x writes `null` for every unset value: a null means "not set", so the default applies."""
    if isinstance(data, dict):
        return {key: _without_nulls(value) for key, value in data.items() if value is not None}
    if isinstance(data, list):
        return [_without_nulls(item) for item in data]
    return data


# Upstream 0.3.x keeps its OpenAI-compatible API server's settings in a top-level `api` block (camelCase here).
_UPSTREAM_API_KEYS = {"host": "host", "port": "port", "timeout": "timeoutS", "apiKey": "apiKey"}


def _adopt_upstream_api_block(raw: dict[str, Any]) -> None:
    """Move a top-level `api` block into `channels.api` (what is set there explicitly wins); `enabled` stays as
    the file says, since upstream's gateway does not serve that API either."""
    block = raw.pop("api", None)
    if not isinstance(block, dict):
        return
    channels = raw.setdefault("channels", {})
    target = channels.setdefault("api", {}) if isinstance(channels, dict) else None
    if not isinstance(target, dict):
        return
    for key, value in block.items():
        ours = _UPSTREAM_API_KEYS.get(to_camel(key))
        if ours is None:
            log.warning("config: ignoring unknown key api.%s", key)
        elif ours not in target and to_snake(ours) not in target:
            target[ours] = value


def save_config(config: Config, path: str | Path | None = None) -> Path:
    """Write config.json atomically (camelCase keys)."""
    file = config_path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.tmp")
    tmp.write_text(json.dumps(config.to_json_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, file)
    return file


def _describe(file: Path, exc: ValidationError) -> str:
    lines = [f"{file}: invalid configuration"]
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"]) or "(root)"
        got = err.get("input")
        shown = json.dumps(got)[:80] if isinstance(got, str | int | float | bool | type(None)) else type(got).__name__
        lines.append(f"  {key}: {err['msg']} (got {shown})")
    return "\n".join(lines)


def _field_for(model: type[BaseModel], key: str) -> str | None:
    """The field name a JSON key sets (by alias or by name), or None when the model has no such field."""
    for name, info in model.model_fields.items():
        if key in (name, info.alias):
            return name
    return None


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def unknown_keys(model: type[BaseModel], data: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the keys in `data` that `model` does not define (they are ignored)."""
    if not isinstance(data, dict):
        return []
    found: list[str] = []
    for key, value in data.items():
        name = _field_for(model, key)
        path = f"{prefix}{key}"
        if name is None:
            found.append(path)
            continue
        sub = _model_of(model.model_fields[name].annotation)
        if sub is not None:
            found.extend(unknown_keys(sub, value, f"{path}."))
    return found


def apply_env_overrides(raw: dict[str, Any], env: Any) -> None:
    """NANOBOT_AGENTS__DEFAULTS__MODEL=x sets agents.defaults.model (values parsed as JSON when they can be)."""
    for var, value in env.items():
        if not var.startswith(ENV_PREFIX) or var in _NOT_OVERRIDES:
            continue
        parts = [p for p in var[len(ENV_PREFIX) :].split("__") if p]
        if not parts:
            continue
        model: type[BaseModel] | None = Config
        node = raw
        for i, part in enumerate(parts):
            key = _env_key(model, part, node)
            if i == len(parts) - 1:
                node[key] = _parse_env_value(value)
                break
            child = node.get(key)
            if not isinstance(child, dict):
                child = {}
                node[key] = child
            node = child
            name = _field_for(model, key) if model else None
            model = _model_of(model.model_fields[name].annotation) if model and name else None


def _env_key(model: type[BaseModel] | None, part: str, node: dict[str, Any]) -> str:
    """Map an env segment (any case, snake_case) to the key the config uses, reusing the file's spelling."""
    snake = part.lower()
    if model is None:
        return next((k for k in node if k.lower() == snake), snake)
    for name, info in model.model_fields.items():
        if snake in (name, (info.alias or "").lower()):
            return next((k for k in node if _field_for(model, k) == name), name)
    return snake


def _parse_env_value(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value
