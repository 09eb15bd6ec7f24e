from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from nanobot.heartbeat import HEARTBEAT_OK, HEARTBEAT_PROMPT, HeartbeatService, has_tasks, is_heartbeat_ok


async def _wait_for(cond: Callable[[], bool], limit_s: float = 5.0) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n\n\t\n",
        "# Heartbeat\n\n## Tasks\n",
        "# Tasks\n<!-- add tasks below -->\n",
        "<!--\nThis file is checked every 30 minutes.\nAdd tasks as a list.\n-->\n# Tasks\n",
        "# Tasks\n- [ ]\n* [ ]\n-   [ ]  \n",
        "# Tasks\n- [x]\n+ [ ]\n1. [ ]\n-\n",
        "# Tasks\n\n---\n\n<!-- unterminated comment\n- check mail\n",
    ],
)
def test_has_tasks_false(text: str) -> None:
    assert has_tasks(text) is False


@pytest.mark.parametrize(
    "text",
    [
        "Check my inbox",
        "# Tasks\n- [ ] Check the weather and tell me if it rains\n",
        "# Tasks\n* water the plants\n",
        "<!-- comment --> remind me to stretch\n",
        "# Tasks\n<!--\nmulti\nline\n-->\n- [ ]\nsummarise the news\n",
        "#hashtag is not a heading",
    ],
)
def test_has_tasks_true(text: str) -> None:
    assert has_tasks(text) is True


def test_prompt_and_ok_helpers() -> None:
    assert "HEARTBEAT.md" in HEARTBEAT_PROMPT and HEARTBEAT_OK in HEARTBEAT_PROMPT
    assert is_heartbeat_ok("HEARTBEAT_OK")
    assert is_heartbeat_ok("  **HEARTBEAT_OK**.\n")
    assert is_heartbeat_ok(None)
    assert not is_heartbeat_ok("I watered the plants. HEARTBEAT_OK")


def test_service_calls_agent_only_when_there_are_tasks(tmp_path: Path) -> None:
    prompts: list[str] = []

    async def on_heartbeat(prompt: str) -> str:
        prompts.append(prompt)
        return HEARTBEAT_OK

    async def main() -> None:
        svc = HeartbeatService(tmp_path, on_heartbeat, interval_s=0.1)
        await svc.start()
        try:
            await asyncio.sleep(0.4)  # no file at all
            (tmp_path / "HEARTBEAT.md").write_text("# Tasks\n<!-- nothing yet -->\n- [ ]\n")
            await asyncio.sleep(0.4)
            assert prompts == []
            (tmp_path / "HEARTBEAT.md").write_text("# Tasks\n- [ ] check the inbox\n")
            await _wait_for(lambda: len(prompts) >= 2)
        finally:
            await svc.stop()
        assert not svc.running
        assert set(prompts) == {HEARTBEAT_PROMPT}

    asyncio.run(main())


def test_service_keeps_going_after_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "HEARTBEAT.md").write_text("- check things\n")
    calls = 0

    async def on_heartbeat(prompt: str) -> str:
        nonlocal calls
        calls += 1
        raise RuntimeError("agent down")

    async def main() -> None:
        svc = HeartbeatService(tmp_path, on_heartbeat, interval_s=0.1)
        await svc.start()
        try:
            await _wait_for(lambda: calls >= 3)
        finally:
            await svc.stop()

    with caplog.at_level(logging.ERROR, logger="nanobot.heartbeat.service"):
        asyncio.run(main())
    assert any("failed" in r.getMessage() for r in caplog.records)


def test_trigger_now(tmp_path: Path) -> None:
    async def on_heartbeat(prompt: str) -> str:
        return "did the thing"

    async def main() -> None:
        svc = HeartbeatService(tmp_path, on_heartbeat, interval_s=3600)
        assert await svc.trigger_now() is None
        (tmp_path / "HEARTBEAT.md").write_text("# Tasks\n- [ ] do the thing\n")
        assert await svc.trigger_now() == "did the thing"

    asyncio.run(main())


def test_disabled_service_does_not_start(tmp_path: Path) -> None:
    (tmp_path / "HEARTBEAT.md").write_text("- task\n")
    calls: list[str] = []

    async def on_heartbeat(prompt: str) -> None:
        calls.append(prompt)

    async def main() -> None:
        svc = HeartbeatService(tmp_path, on_heartbeat, interval_s=0.05, enabled=False)
        await svc.start()
        assert not svc.running
        await asyncio.sleep(0.2)
        svc.stop()

    asyncio.run(main())
    assert calls == []
