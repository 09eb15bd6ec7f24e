"""Which tools an agent gets: the workspace tools for every agent, plus the conversation tools."""

from __future__ import annotations

from pathlib import Path

from nanobot.agent.tools.filesystem import EditFileTool, ListDirTool, ReadFileTool, WriteFileTool
from nanobot.agent.tools.registry import ToolRegistry
from nanobot.agent.tools.shell import ExecTool
from nanobot.agent.tools.web import WebFetchTool, WebSearchTool
from nanobot.config.schema import ToolsConfig


def workspace_tools(workspace: Path, config: ToolsConfig) -> ToolRegistry:
    """Files, shell and web: what both the main agent and its subagents may use."""
    allowed = workspace if config.restrict_to_workspace else None
    registry = ToolRegistry()
    for tool_cls in (ReadFileTool, WriteFileTool, EditFileTool, ListDirTool):
        registry.register(tool_cls(workspace, allowed_dir=allowed))
    registry.register(
        ExecTool(workspace, timeout_s=config.exec.timeout, restrict_to_workspace=config.restrict_to_workspace)
    )
    registry.register(WebSearchTool(api_key=config.web.search.api_key, max_results=config.web.search.max_results))
    registry.register(WebFetchTool())
    return registry
