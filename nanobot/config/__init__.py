"""Configuration: schema (pydantic models) and loader (file, env overrides, errors)."""

from nanobot.config.loader import ConfigError, config_path, load_config, save_config
from nanobot.config.schema import Config

__all__ = ["Config", "ConfigError", "config_path", "load_config", "save_config"]
