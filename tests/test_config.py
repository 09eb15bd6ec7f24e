"""Config: camelCase and snake_case, env overrides, upstream configs, clear errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from nanobot.config.loader import ConfigError, load_config, save_config
from nanobot.config.schema import Config

UPSTREAM_014 = {
    "agents": {
        "defaults": {
            "workspace": "~/.nanobot/workspace",
            "model": "anthropic/claude-opus-4-5",
            "maxTokens": 8192,
            "temperature": 0.7,
            "maxToolIterations": 20,
        }
    },
    "channels": {
        "telegram": {"enabled": True, "token": "123:abc", "allowFrom": ["alice"]},
        "whatsapp": {"enabled": False, "bridgeUrl": "ws://localhost:3001", "allowFrom": []},
        "feishu": {"enabled": False, "appId": "", "appSecret": ""},
    },
    "providers": {
        "anthropic": {"apiKey": "sk-ant"},
        "openrouter": {"apiKey": "", "apiBase": None},
        "zhipu": {"apiKey": ""},
        "vllm": {"apiKey": "", "apiBase": "http://localhost:8000/v1"},
    },
    "gateway": {"host": "0.0.0.0", "port": 18790},
    "tools": {
        "web": {"search": {"apiKey": "brave", "maxResults": 5}},
        "exec": {"timeout": 60},
        "restrictToWorkspace": False,
    },
}

UPSTREAM_03 = {
    "agents": {
        "defaults": {
            "workspace": "~/.nanobot/workspace",
            "model": "deepseek-chat",
            "provider": "auto",
            "maxTokens": 8192,
            "temperature": 0.1,
            "maxToolIterations": 40,
            "memoryWindow": 100,
            "reasoningEffort": None,
        }
    },
    "channels": {
        "sendProgress": True,
        "sendToolHints": False,
        "telegram": {"enabled": False, "token": "", "allowFrom": [], "proxy": None, "replyToMessage": False},
        "discord": {"enabled": False, "token": ""},
        "email": {"enabled": False, "consentGranted": False},
    },
    "providers": {
        "custom": {"apiKey": "", "apiBase": None, "extraHeaders": None},
        "deepseek": {"apiKey": "sk-ds", "apiBase": None, "extraHeaders": None},
        "githubCopilot": {"apiKey": ""},
    },
    "gateway": {"host": "0.0.0.0", "port": 18790, "heartbeat": {"enabled": True, "intervalS": 1800}},
    "tools": {
        "web": {"proxy": None, "search": {"apiKey": "", "maxResults": 5}},
        "exec": {"timeout": 60},
        "restrictToWorkspace": False,
        "mcpServers": {},
    },
}


def write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_defaults_match_the_documented_ones() -> None:
    c = Config()
    d = c.agents.defaults
    assert (d.workspace, d.provider, d.max_tokens, d.temperature, d.max_tool_iterations, d.memory_window) == (
        "~/.nanobot/workspace",
        "auto",
        8192,
        0.1,
        40,
        100,
    )
    assert (c.gateway.port, c.gateway.heartbeat.enabled, c.gateway.heartbeat.interval_s) == (18790, True, 1800)
    assert (c.channels.api.host, c.channels.api.port, c.channels.api.timeout_s) == ("127.0.0.1", 8900, 120)
    assert (c.bus.backend, c.bus.shards, c.bus.outbound, c.bus.lock.ttl_ms) == ("local", 16, "stream", 120000)
    assert c.sessions.backend == "file" and c.tools.exec.timeout == 60


def test_round_trip_writes_camel_case(tmp_path: Path) -> None:
    c = Config()
    c.agents.defaults.max_tokens = 1234
    c.channels.api.allow_from = ["x"]
    path = save_config(c, tmp_path / "config.json")
    raw = json.loads(path.read_text())
    assert raw["agents"]["defaults"]["maxTokens"] == 1234
    assert raw["channels"]["api"]["allowFrom"] == ["x"]
    assert raw["bus"]["lock"]["ttlMs"] == 120000 and raw["bus"]["runEmbeddedWorker"] is True
    assert load_config(path) == c


def test_snake_case_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path / "c.json", {"agents": {"defaults": {"max_tokens": 99, "memory_window": 7}}})
    d = load_config(path).agents.defaults
    assert (d.max_tokens, d.memory_window) == (99, 7)


@pytest.mark.parametrize("upstream", [UPSTREAM_014, UPSTREAM_03], ids=["0.1.4", "0.3.x"])
def test_upstream_configs_load_with_one_warning(
    tmp_path: Path, upstream: dict, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "config.json", upstream)
    with caplog.at_level(logging.WARNING):
        config = load_config(path, env={})
    warnings = [r for r in caplog.records if "unknown keys" in r.getMessage()]
    assert len(warnings) == 1
    assert config.agents.defaults.max_tool_iterations == upstream["agents"]["defaults"]["maxToolIterations"]


def test_upstream_014_values_are_read(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        config = load_config(write(tmp_path / "config.json", UPSTREAM_014), env={})
    assert config.channels.telegram.token == "123:abc"
    assert config.channels.telegram.allow_from == ["alice"]
    assert config.providers.anthropic.api_key == "sk-ant"
    assert config.tools.web.search.api_key == "brave"
    assert "channels.feishu" in caplog.text


def test_env_overrides_nest_with_double_underscore(tmp_path: Path) -> None:
    path = write(tmp_path / "c.json", {"agents": {"defaults": {"maxTokens": 10}}})
    env = {
        "NANOBOT_AGENTS__DEFAULTS__MAX_TOKENS": "42",
        "NANOBOT_AGENTS__DEFAULTS__MODEL": "gpt-4o",
        "NANOBOT_CHANNELS__API__ENABLED": "true",
        "NANOBOT_PROVIDERS__OPENAI__APIKEY": "sk-env",
        "NANOBOT_BUS__LOCK__TTL_MS": "5000",
        "NANOBOT_CONFIG": "/ignored",
    }
    c = load_config(path, env=env)
    assert c.agents.defaults.max_tokens == 42
    assert c.agents.defaults.model == "gpt-4o"
    assert c.channels.api.enabled is True
    assert c.providers.openai.api_key == "sk-env"
    assert c.bus.lock.ttl_ms == 5000


def test_config_path_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "elsewhere.json", {"gateway": {"port": 1234}})
    monkeypatch.setenv("NANOBOT_CONFIG", str(path))
    assert load_config().gateway.port == 1234


def test_malformed_value_names_file_key_and_expectation(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.json", {"agents": {"defaults": {"maxTokens": "lots"}}, "bus": {"backend": "kafka"}})
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    text = str(info.value)
    assert str(path) in text
    assert "agents.defaults.maxTokens" in text and "integer" in text
    assert "bus.backend" in text and "'local' or 'celery'" in text


def test_invalid_json_names_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{\n  "agents": {,\n}')
    with pytest.raises(ConfigError, match=r"broken.json: invalid JSON at line 2"):
        load_config(path, env={})


def test_missing_file_means_defaults(tmp_path: Path) -> None:
    assert load_config(tmp_path / "nope.json", env={}) == Config()


UPSTREAM_035_ONBOARD = Path(__file__).parent / "fixtures" / "upstream_0_3_5_config.json"


def test_config_written_by_upstream_035_onboard_loads(caplog: pytest.LogCaptureFixture) -> None:
    """The file upstream nanobot 0.3.5's `nanobot onboard` writes, byte for byte: nulls for unset values, a
    top-level `api` block, channels and providers we do not have."""
    raw = json.loads(UPSTREAM_035_ONBOARD.read_text())
    assert raw["providers"]["openai"]["apiKey"] is None
    with caplog.at_level(logging.WARNING):
        config = load_config(UPSTREAM_035_ONBOARD, env={})
    assert len([r for r in caplog.records if "unknown keys" in r.getMessage()]) == 1
    assert "channels.discord" in caplog.text and "api." not in caplog.text.split("unknown keys:")[1].split(",")[0]
    assert config.providers.openai.api_key == ""  # null means "not set"
    tg = config.channels.telegram
    assert (tg.group_policy, tg.mode, tg.webhook_listen_host, tg.webhook_listen_port, tg.webhook_path) == (
        "mention", "polling", "127.0.0.1", 8081, "/telegram")
    assert tg.react_emoji == "👀" and tg.proxy == ""
    assert (config.channels.api.host, config.channels.api.port, config.channels.api.timeout_s) == (
        "127.0.0.1", 8900, 120.0)
    assert not config.channels.api.enabled
    assert (config.gateway.host, config.gateway.port) == ("127.0.0.1", 18790)


def test_top_level_api_block_fills_channels_api_without_overriding_it(tmp_path: Path) -> None:
    path = write(tmp_path / "config.json", {
        "api": {"host": "0.0.0.0", "port": 9100, "timeout": 30, "apiKey": "k"},
        "channels": {"api": {"enabled": True, "port": 9200}},
    })
    api = load_config(path, env={}).channels.api
    assert (api.enabled, api.host, api.port, api.timeout_s, api.api_key) == (True, "0.0.0.0", 9200, 30.0, "k")


def test_null_where_a_value_is_required_means_the_default(tmp_path: Path) -> None:
    path = write(tmp_path / "config.json", {"channels": {"telegram": {"token": None, "allowFrom": None}},
                                            "agents": {"defaults": {"maxTokens": None}}})
    config = load_config(path, env={})
    assert (config.channels.telegram.token, config.channels.telegram.allow_from) == ("", [])
    assert config.agents.defaults.max_tokens == 8192
