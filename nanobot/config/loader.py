"""Finding, reading, validating and writing config.json."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError, create_model
from pydantic.alias_generators import to_camel, to_snake
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict, SettingsError

from nanobot.config.schema import Config

log = logging.getLogger(__name__)

ENV_PREFIX = "NANOBOT_"
ENV_NESTED_DELIMITER = "__"
ENV_CONFIG_PATH = "NANOBOT_CONFIG"
# Variables with the prefix that are not config overrides.
_NOT_OVERRIDES = {ENV_CONFIG_PATH, "NANOBOT_LOG_LEVEL", "NANOBOT_LOG_FORMAT"}


class ConfigError(Exception):
    """A config file or a NANOBOT_* variable that cannot be used; the message names the file or the variable, the key
    and what was expected."""


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


def load_config(path: str | Path | None = None, *, env: Mapping[str, str] | None = None) -> Config:
    """Read the config file (a missing file means defaults), apply the NANOBOT_* overrides of `env` (default:
    os.environ) over it, validate. Only here does the environment reach the config: `Config()` never reads it."""
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
    overrides = env_overrides(os.environ if env is None else env)
    if overrides.unknown:
        shown = ", ".join(map(shown_variable, overrides.unknown))
        log.warning("environment: ignoring variables that name no config key: %s", shown)
    _overlay(Config, raw, overrides.values)
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(file, exc, overrides)) from exc


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


def _describe(file: Path, exc: ValidationError, overrides: EnvOverrides) -> str:
    lines = [f"{file}: invalid configuration"]
    for err in exc.errors():
        key = ".".join(_shown_path(err["loc"])) or "(root)"
        var = overrides.variable_for(err["loc"])
        if var is not None:
            key = f"environment variable {shown_variable(var)} ({key})"
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


# ---------------------------------------------------------------- NANOBOT_* environment variables
class _EnvSettings(BaseSettings):
    """How pydantic-settings reads the overrides: NANOBOT_ + the key path joined by "__", any case; below the top
    level a key is its snake_case name or its camelCase alias. A string key takes the value verbatim, a number or a
    flag is parsed by pydantic, a list, a dict or a whole block is JSON. A dict's entries can also be set one by one
    (NANOBOT_CHANNELS__API__KEYS__<key>=client), but their keys then come lower-cased: JSON keeps the case."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_NESTED_DELIMITER, case_sensitive=False
    )


# Config's top-level keys without their aliases (an aliased key would also be read from its unprefixed name).
# Only the source reads this class; it is never instantiated.
_ConfigFromEnv: type[BaseSettings] = create_model(
    "ConfigFromEnv",
    __base__=_EnvSettings,
    **{name: (info.annotation, None) for name, info in Config.model_fields.items()},
)


class _EnvSource(EnvSettingsSource):
    """pydantic-settings' env source over a given mapping instead of os.environ."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._given = env
        super().__init__(_ConfigFromEnv)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {name.lower(): value for name, value in self._given.items()}


@dataclass
class EnvOverrides:
    """What the NANOBOT_* variables set: `values` (camelCase keys, as the file spells them), the variable that set
    each leaf path (`origins`), and the variables that name no config key (`unknown`)."""

    values: dict[str, Any] = field(default_factory=dict)
    origins: dict[tuple[str, ...], str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)

    def variable_for(self, loc: tuple[str | int, ...]) -> str | None:
        """The variable that set the value at `loc` (a validation error's location) or a value holding it."""
        return next((var for path, var in self.origins.items() if loc[: len(path)] == path), None)

    def clashing(self, path: tuple[str, ...]) -> str | None:
        """The variable that already set `path`, a key inside it, or a block around it."""
        return next((var for known, var in self.origins.items() if path[: len(known)] == known[: len(path)]), None)


def is_override(var: str) -> bool:
    """NANOBOT_<key path>, not one of the variables that say where the config is or how to log."""
    upper = var.upper()
    return upper.startswith(ENV_PREFIX) and upper not in _NOT_OVERRIDES and bool(upper[len(ENV_PREFIX) :].strip("_"))


def env_overrides(env: Mapping[str, str]) -> EnvOverrides:
    """Read the NANOBOT_* overrides in `env`; ConfigError naming the variable when one cannot be read, or when two
    set the same key."""
    result = EnvOverrides()
    # One variable at a time, so that each value is known by the variable that set it; in a stable order.
    for var in sorted(filter(is_override, env), key=lambda v: (v.count(ENV_NESTED_DELIMITER), v)):
        try:
            values = _aliased(Config, _EnvSource({var: env[var]})())
        except SettingsError as exc:
            cause = exc.__cause__
            detail = f"not valid JSON ({cause})" if isinstance(cause, json.JSONDecodeError) else str(cause or exc)
            shown = shown_variable(var)
            raise ConfigError(f"environment variable {shown}: {detail}; this key takes JSON: [...] or {{...}}") from exc
        if not values or unknown_keys(Config, values):
            result.unknown.append(var)
            continue
        for path in _leaf_paths(values):
            clash = result.clashing(path)
            if clash is not None:
                raise ConfigError(
                    f"environment variables {shown_variable(clash)} and {shown_variable(var)} set the same key "
                    f"{'.'.join(_shown_path(path))}"
                )
            result.origins[path] = var
        _overlay(Config, result.values, values)
    return result


def apply_env_overrides(raw: dict[str, Any], env: Mapping[str, str]) -> list[str]:
    """Overlay the NANOBOT_* overrides of `env` on `raw` (the file's dict): NANOBOT_AGENTS__DEFAULTS__MODEL=x sets
    agents.defaults.model. Returns the variables that name no config key; each lands in `raw` under its lowercased
    path, where `unknown_keys` reports it, as it does the file's unknown keys."""
    overrides = env_overrides(env)
    _overlay(Config, raw, overrides.values)
    for var in overrides.unknown:
        *parents, last = var[len(ENV_PREFIX) :].lower().split(ENV_NESTED_DELIMITER)
        node = raw
        for part in parents:
            child = node.get(part)
            node[part] = child = child if isinstance(child, dict) else {}
            node = child
        node[last] = env[var]
    return overrides.unknown


def _aliased(model: type[BaseModel] | None, data: dict[str, Any]) -> dict[str, Any]:
    """`data` with every key a model defines spelled as its camelCase alias (unknown keys stay as they are)."""
    if model is None:
        return data
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = _field_for(model, key)
        if name is None:
            out[key] = value
            continue
        info = model.model_fields[name]
        sub = _model_of(info.annotation)
        out[info.alias or name] = _aliased(sub, value) if sub is not None and isinstance(value, dict) else value
    return out


def _leaf_paths(data: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths: list[tuple[str, ...]] = []
    for key, value in data.items():
        path = (*prefix, key)
        paths.extend(_leaf_paths(value, path) if isinstance(value, dict) and value else [path])
    return paths


def _overlay(model: type[BaseModel] | None, base: dict[str, Any], top: dict[str, Any]) -> None:
    """Merge `top` into `base`, `top` winning; a key the file spells otherwise (snake_case or camelCase) is the same
    key; dicts merge key by key."""
    for key, value in top.items():
        same = _spellings(model, base, key)
        existing = base.get(same[0]) if same else None
        for k in same:
            del base[k]
        if isinstance(value, dict) and isinstance(existing, dict):
            merged = dict(existing)
            name = _field_for(model, key) if model is not None else None
            _overlay(_model_of(model.model_fields[name].annotation) if model and name else None, merged, value)
            base[key] = merged
        else:
            base[key] = value


def _spellings(model: type[BaseModel] | None, data: dict[str, Any], key: str) -> list[str]:
    """The keys of `data` that set what `key` sets: the field's name and its alias, or `key` itself."""
    name = _field_for(model, key) if model is not None else None
    if model is None or name is None:
        return [key] if key in data else []
    return [k for k in data if _field_for(model, k) == name]


def shown_variable(var: str) -> str:
    """`var` as a message may show it: the key of a dict (a client's API key, ...) is replaced by <key>."""
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(_shown_path(var[len(ENV_PREFIX) :].split(ENV_NESTED_DELIMITER)))


def _shown_path(parts: Sequence[str | int]) -> list[str]:
    """A key path as a message may show it: below a field that is not a block, a name is a dict's key and may be a
    secret, so it becomes <key> (list indexes stay); after a name that is not a config key, "…" stands for the rest."""
    shown: list[str] = []
    model: type[BaseModel] | None = Config
    for index, part in enumerate(parts):
        if model is None:
            shown.append(str(part) if isinstance(part, int) else "<key>")
            continue
        shown.append(str(part))
        lower = str(part).lower()
        fields = model.model_fields.items()
        name = next((n for n, info in fields if lower in (n.lower(), (info.alias or "").lower())), None)
        if name is None:
            if index + 1 < len(parts):
                shown.append("…")
            break
        model = _model_of(model.model_fields[name].annotation)
    return shown
