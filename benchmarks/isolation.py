"""What keeping people apart costs a turn: `tools.isolation` conversation against shared.

    python -m benchmarks.isolation [--conversations 50] [--turns 4] [--rounds 3]

One agent (in this process, as a worker holds it) runs the same turns twice over, once per setting, in rounds
that alternate the two so the machine's drift falls on both: each turn asks the simulated LLM (no latency), which
calls `write_file` then `read_file` in the conversation's folder (or the shared workspace), then answers. Reported:
the median and mean wall time per turn and per tool call, for each setting, the difference, and the perfect
system beside them (a turn that costs nothing but the LLM round trips, measured with no tool calls at all).
The folder of a conversation is made on its first tool call; later calls find it, check it and resolve in it.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from nanobot.agent.loop import AgentLoop
from nanobot.bus.queue import MessageBus
from nanobot.config.schema import Config
from nanobot.providers.openai_compat import OpenAICompatProvider
from nanobot.testing.llm_server import FakeLLM, Rule

TOOL_CALLS = [
    {"name": "write_file", "arguments": {"path": "notes.txt", "content": "a note"}},
    {"name": "read_file", "arguments": {"path": "notes.txt"}},
]


async def run_turns(workspace: Path, isolation: str, llm: FakeLLM, conversations: int, turns: int,
                    with_tools: bool) -> list[float]:
    """Seconds per turn, one conversation after another (no overlap: the cost, not the concurrency)."""
    config = Config.model_validate({"agents": {"defaults": {"workspace": str(workspace)}},
                                    "tools": {"isolation": isolation, "exec": {"enable": False}}})
    provider = OpenAICompatProvider(api_key="k", api_base=llm.base_url, default_model="m")
    agent = AgentLoop.from_config(config, MessageBus(), provider)
    times: list[float] = []
    try:
        for turn in range(turns):
            for conversation in range(conversations):
                text = f"{'tools' if with_tools else 'plain'} {isolation} {conversation} {turn}"
                started = time.perf_counter()
                await agent.process_direct(text, session_key=f"telegram:{conversation}", channel="telegram",
                                           chat_id=str(conversation))
                times.append(time.perf_counter() - started)
    finally:
        await agent.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=50)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    console = Console()
    llm = FakeLLM()
    llm.start()
    llm.add_rule(Rule(match="tools", when_last_role="user", tool_calls=TOOL_CALLS, times=None))
    results: dict[str, list[float]] = {"conversation": [], "shared": [], "no tools": []}
    try:
        for _ in range(args.rounds):
            for isolation in ("conversation", "shared"):
                with tempfile.TemporaryDirectory() as workspace:
                    results[isolation] += asyncio.run(
                        run_turns(Path(workspace), isolation, llm, args.conversations, args.turns, True))
            with tempfile.TemporaryDirectory() as workspace:
                results["no tools"] += asyncio.run(
                    run_turns(Path(workspace), "shared", llm, args.conversations, args.turns, False))
    finally:
        llm.stop()
    table = Table(title=f"A turn with two file-tool calls: {args.conversations} conversations × {args.turns} turns "
                        f"× {args.rounds} rounds per setting")
    for column in ("tools.isolation", "turns", "median ms/turn", "mean ms/turn"):
        table.add_column(column)
    for name, times in results.items():
        label = "perfect system (same LLM round trips, no tool work)" if name == "no tools" else name
        table.add_row(label, str(len(times)), f"{statistics.median(times) * 1000:.2f}",
                      f"{statistics.mean(times) * 1000:.2f}")
    console.print(table)
    extra = statistics.median(results["conversation"]) - statistics.median(results["shared"])
    console.print(f"isolation costs {extra * 1000:+.3f} ms per turn (median), "
                  f"{extra * 1000 / len(TOOL_CALLS):+.3f} ms per tool call")


if __name__ == "__main__":
    main()
