"""Which tools an agent gets: the workspace tools for every agent, plus the conversation tools.

`tools.file.enable`, `tools.exec.enable` and `tools.web.enable` leave a family out. `agent_tools_config`
settles the defaults that depend on the mode (the exec sandbox, read-only instructions, isolation) when an agent
is built from the whole config; `workspace_tools` takes a `ToolsConfig` as it is ("" sandbox: none; ""
isolation: shared)."""

from __future__ import annotations

from pathlib import Path

from nanobot.agent.tools.base import Tool
from nanobot.agent.tools.filesystem import EditFileTool, ListDirTool, ReadFileTool, WriteFileTool
from nanobot.agent.tools.protected_paths import instruction_paths
from nanobot.agent.tools.registry import ToolRegistry
from nanobot.agent.tools.sandbox import choose_sandbox
from nanobot.agent.tools.shell import ExecTool
from nanobot.agent.tools.validation import compile_schema
from nanobot.agent.tools.web import WebFetchTool, WebSearchTool
from nanobot.config.schema import Config, ToolsConfig


def agent_tools_config(config: Config) -> ToolsConfig:
    """`config.tools` with the defaults that depend on the mode settled, in a copy (the config, and any file it is
    saved to, keep them unset). A distributed deployment serves many people: exec's sandbox "" becomes bubblewrap
    where it works here (else none, with one warning), and the operator's instructions are read-only to tools."""
    many = config.bus.backend == "celery"
    tools = config.tools.model_copy(deep=True)
    tools.exec.sandbox = choose_sandbox(tools.exec.sandbox, prefer_bwrap=many)  # type: ignore[assignment]
    if tools.read_only_instructions is None:
        tools.read_only_instructions = many
    tools.isolation = config.isolation
    return tools


def is_isolated(config: ToolsConfig) -> bool:
    """Whether each conversation's tools work in its own folder (`tools.isolation`; "" here means shared)."""
    return config.isolation == "conversation"


def workspace_tools(workspace: Path, config: ToolsConfig) -> ToolRegistry:
    """Files, shell and web: what both the main agent and its subagents may use."""
    allowed = workspace if config.restrict_to_workspace else None
    read_only = bool(config.read_only_instructions)
    isolated = is_isolated(config)
    registry = ToolRegistry()
    if config.file.enable:
        for tool_cls in (ReadFileTool, WriteFileTool, EditFileTool, ListDirTool):
            registry.register(
                tool_cls(workspace, allowed_dir=allowed, read_only_instructions=read_only, isolated=isolated)
            )
    if config.exec.enable:
        sandbox = choose_sandbox(config.exec.sandbox, prefer_bwrap=False)
        registry.register(
            ExecTool.from_config(
                workspace,
                config.exec,
                sandbox=sandbox,
                restrict_to_workspace=config.restrict_to_workspace,
                read_only_paths=instruction_paths(workspace) if read_only else (),
                isolated=isolated,
            )
        )
    if config.web.enable:
        registry.register(
            WebSearchTool(
                api_key=config.web.search.api_key,
                max_results=config.web.search.max_results,
                proxy=config.web.proxy,
                ssrf_whitelist=config.ssrf_whitelist,
            )
        )
        registry.register(
            WebFetchTool(
                timeout_s=config.web.fetch.timeout_s,
                max_bytes=config.web.fetch.max_bytes,
                max_redirects=config.web.fetch.max_redirects,
                proxy=config.web.proxy,
                ssrf_whitelist=config.ssrf_whitelist,
            )
        )
    return registry


def precompile_tool_schemas() -> int:
    """Build the argument validators of every built-in tool class now (they are cached by schema), so processes
    forked afterwards (a worker's pool children) do not each build them on their first turn. Returns how many."""
    import nanobot.agent.loop  # noqa: F401  (imports every built-in tool)

    pending: list[type[Tool]] = [Tool]
    built = 0
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        schema = cls.__dict__.get("parameters")
        if isinstance(schema, dict):
            compile_schema(schema)
            built += 1
    return built

