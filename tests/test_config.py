"""Config: camelCase and snake_case, env overrides, upstream configs, clear errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from nanobot.config.loader import ConfigError, apply_env_overrides, load_config, save_config, unknown_keys
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
    assert (c.bus.backend, c.bus.shards, c.bus.outbound, c.bus.lock.ttl_ms) == ("local", 1, "stream", 120000)
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


# ---------------------------------------------------------------- NANOBOT_* overrides (pydantic-settings)
@pytest.mark.parametrize("value", ["1e5", "007", "true", "null", '{"a":1}', "[1, 2]", "  spaced  ", ""])
def test_a_string_key_takes_the_value_verbatim(tmp_path: Path, value: str) -> None:
    config = load_config(tmp_path / "none.json", env={"NANOBOT_CHANNELS__API__API_KEY": value,
                                                      "NANOBOT_AGENTS__DEFAULTS__MODEL": value})
    assert config.channels.api.api_key == value
    assert config.agents.defaults.model == value


def test_bool_int_float_and_list_overrides_are_parsed_for_their_keys(tmp_path: Path) -> None:
    env = {
        "NANOBOT_CHANNELS__TELEGRAM__ENABLED": "1",
        "NANOBOT_TOOLS__EXEC__SANDBOX_NETWORK": "false",
        "NANOBOT_CHANNELS__API__PORT": "9001",
        "NANOBOT_AGENTS__DEFAULTS__TEMPERATURE": "0.5",
        "NANOBOT_AGENTS__DEFAULTS__MAX_CONCURRENT_TURNS": "3",
        "NANOBOT_CHANNELS__TELEGRAM__ALLOW_FROM": '["123","alice"]',
        "NANOBOT_CHANNELS__API__KEYS": '{"K-1": "alice"}',
        "NANOBOT_CHANNELS__API__KEYS__K2": "bob",
        "nanobot_bus__lock__ttl_ms": "5000",  # any case
    }
    config = load_config(tmp_path / "none.json", env=env)
    assert config.channels.telegram.enabled is True and config.tools.exec.sandbox_network is False
    assert config.channels.api.port == 9001 and config.agents.defaults.temperature == 0.5
    assert config.agents.defaults.max_concurrent_turns == 3
    assert config.channels.telegram.allow_from == ["123", "alice"]
    assert config.channels.api.keys == {"K-1": "alice", "k2": "bob"}
    assert config.bus.lock.ttl_ms == 5000


def test_env_beats_the_file_and_the_file_keeps_the_rest(tmp_path: Path) -> None:
    path = write(tmp_path / "c.json", {
        "agents": {"defaults": {"max_tokens": 10, "model": "from-file", "temperature": 0.3}},
        "channels": {"api": {"keys": {"k1": "alice"}, "allowFrom": ["alice"]}},
    })
    config = load_config(path, env={
        "NANOBOT_AGENTS__DEFAULTS__MAXTOKENS": "42",  # the camelCase alias, upper-cased, is the same key
        "NANOBOT_AGENTS__DEFAULTS__MODEL": "from-env",
        "NANOBOT_CHANNELS__API__KEYS__K2": "bob",
    })
    d = config.agents.defaults
    assert (d.max_tokens, d.model, d.temperature) == (42, "from-env", 0.3)
    assert config.channels.api.keys == {"k1": "alice", "k2": "bob"} and config.channels.api.allow_from == ["alice"]


def test_config_built_in_code_never_reads_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NANOBOT_AGENTS__DEFAULTS__MODEL", "from-process-env")
    monkeypatch.setenv("NANOBOT_CHANNELS__API__PORT", "1234")
    assert Config().agents.defaults.model == "anthropic/claude-opus-4-5"
    assert Config.model_validate({}).channels.api.port == 8900
    assert load_config(tmp_path / "none.json", env={}) == Config()  # an explicit env is all there is
    from_process = load_config(tmp_path / "none.json")
    assert (from_process.agents.defaults.model, from_process.channels.api.port) == ("from-process-env", 1234)


@pytest.mark.parametrize(
    ("var", "value", "fragment"),
    [
        ("NANOBOT_AGENTS__DEFAULTS__MAX_TOKENS", "lots", "valid integer"),
        ("NANOBOT_AGENTS__DEFAULTS__MAX_TOKENS", "-1", "greater than 0"),
        ("NANOBOT_CHANNELS__API__ENABLED", "maybe", "valid boolean"),
        ("NANOBOT_BUS__BACKEND", "kafka", "'local' or 'celery'"),
        ("NANOBOT_CHANNELS__TELEGRAM__ALLOW_FROM", "alice", "not valid JSON"),
        ("NANOBOT_CHANNELS__API__KEYS", "[1", "not valid JSON"),
        ("NANOBOT_CHANNELS__API__KEYS", '["a"]', "valid dictionary"),
        ("NANOBOT_CHANNELS__API", '{"port": "x"}', "valid integer"),
    ],
)
def test_a_malformed_override_names_the_variable(tmp_path: Path, var: str, value: str, fragment: str) -> None:
    path = write(tmp_path / "c.json", {"agents": {"defaults": {"maxTokens": 10}}})
    with pytest.raises(ConfigError) as info:
        load_config(path, env={var: value, "NANOBOT_AGENTS__DEFAULTS__MODEL": "fine"})
    text = str(info.value)
    assert f"environment variable {var}" in text and fragment in text, text
    assert "NANOBOT_AGENTS__DEFAULTS__MODEL" not in text


def test_a_malformed_file_value_is_not_blamed_on_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path / "c.json", {"agents": {"defaults": {"maxTokens": "lots"}}})
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"NANOBOT_AGENTS__DEFAULTS__MODEL": "fine"})
    assert "agents.defaults.maxTokens: Input should be a valid integer" in str(info.value)
    assert "environment" not in str(info.value)


def test_two_variables_for_one_key_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="NANOBOT_AGENTS__DEFAULTS__MAXTOKENS and NANOBOT_AGENTS__DEFAULTS__MAX_T"):
        load_config(tmp_path / "none.json", env={"NANOBOT_AGENTS__DEFAULTS__MAX_TOKENS": "1",
                                                 "NANOBOT_AGENTS__DEFAULTS__MAXTOKENS": "2"})
    with pytest.raises(ConfigError, match=r"set the same key channels\.api\.port"):
        load_config(tmp_path / "none.json", env={"NANOBOT_CHANNELS__API": '{"port": 1}',
                                                 "NANOBOT_CHANNELS__API__PORT": "2"})
    api = load_config(tmp_path / "none.json", env={"NANOBOT_CHANNELS__API": '{"port": 1}',
                                                   "NANOBOT_CHANNELS__API__HOST": "0.0.0.0"}).channels.api
    assert (api.port, api.host) == (1, "0.0.0.0")


def test_unknown_variables_are_named_in_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    env = {
        "NANOBOT_AGENTS__DEFAULTS__MODELL": "typo-secret-value",
        "NANOBOT_NOPE": "x",
        "NANOBOT_CONFIG": "/ignored",
        "NANOBOT_LOG_LEVEL": "DEBUG",
        "NANOBOT_LOG_FORMAT": "json",
        "OTHER_VAR": "x",
        "NANOBOT_AGENTS__DEFAULTS__MODEL": "set",
    }
    with caplog.at_level(logging.WARNING, logger="nanobot.config.loader"):
        config = load_config(tmp_path / "none.json", env=env)
    assert config.agents.defaults.model == "set"
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "NANOBOT_AGENTS__DEFAULTS__MODELL" in warning and "NANOBOT_NOPE" in warning
    assert "typo-secret-value" not in warning and "NANOBOT_CONFIG" not in warning and "LOG_" not in warning


def test_apply_env_overrides_reports_unknown_variables_in_raw() -> None:
    raw: dict = {"agents": {"defaults": {"max_tokens": 5}}}
    unknown = apply_env_overrides(raw, {"NANOBOT_AGENTS__DEFAULTS__MAX_TOKENS": "7", "NANOBOT_FOO__BAR": "x"})
    assert unknown == ["NANOBOT_FOO__BAR"]
    assert raw == {"agents": {"defaults": {"maxTokens": "7"}}, "foo": {"bar": "x"}}
    assert unknown_keys(Config, raw) == ["foo"]


def test_only_prefixed_variables_are_read(tmp_path: Path) -> None:
    env = {"AGENTS__DEFAULTS__MODEL": "leak", "CHANNELS__API__PORT": "1", "agents": '{"defaults": {"model": "x"}}'}
    assert load_config(tmp_path / "none.json", env=env) == Config()


def test_messages_never_show_a_dict_key_from_a_variable_name(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A client's API key can be a variable's last segment (NANOBOT_CHANNELS__API__KEYS__<key>=client)."""
    secret = "SKSECRET123"
    cases = [
        {"NANOBOT_CHANNELS__API__KEYS": f'{{"{secret}": [1]}}'},
        {"NANOBOT_CHANNELS__API__KEYS": f'{{"{secret.lower()}": "a"}}', f"NANOBOT_CHANNELS__API__KEYS__{secret}": "b"},
    ]
    for env in cases:
        with pytest.raises(ConfigError) as info:
            load_config(tmp_path / "none.json", env=env)
        assert "NANOBOT_CHANNELS__API__KEYS" in str(info.value) and "<key>" in str(info.value)
        assert secret.lower() not in str(info.value).lower()
    with caplog.at_level(logging.WARNING, logger="nanobot.config.loader"):
        load_config(tmp_path / "none.json", env={f"NANOBOT_CHANNELS__APIX__KEYS__{secret}": "alice"})
    assert "NANOBOT_CHANNELS__APIX__…" in caplog.text and secret not in caplog.text


def test_worker_command_line_by_pool() -> None:
    """`nanobot worker` runs the threads pool by default (100 turns at once per process); `--autoscale` alone asks
    for prefork, the card's command; a configured prefork pool autoscales as configured."""
    from nanobot_celery.worker import worker_argv

    def flags(config: Config, **options: Any) -> list[str]:
        return [a for a in worker_argv(config, **options) if a.startswith(("--pool", "--autoscale", "--concurrency"))]

    default = Config()
    assert flags(default) == ["--pool=threads", "--concurrency=100"]
    assert flags(default, concurrency=300) == ["--pool=threads", "--concurrency=300"]
    assert flags(default, autoscale="10,2") == ["--pool=prefork", "--autoscale=10,2"]
    prefork = Config.model_validate({"bus": {"worker": {"pool": "prefork", "autoscale": "6,1"}}})
    assert flags(prefork) == ["--pool=prefork", "--autoscale=6,1"]
    assert flags(prefork, concurrency=4) == ["--pool=prefork", "--concurrency=4"]
    assert flags(default, pool="solo") == ["--pool=solo"]
