"""Skills: SKILL.md front matter read as YAML, upstream's metadata, broken skills skipped with a warning."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from nanobot.agent.skills import BUILTIN_SKILLS_DIR, SkillError, SkillsLoader, split_front_matter


def write_skill(workspace: Path, folder: str, text: str) -> Path:
    path = workspace / "skills" / folder / "SKILL.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return tmp_path / "workspace"


def loader(workspace: Path) -> SkillsLoader:
    return SkillsLoader(workspace, builtin_dir=workspace / "no-builtins")


def test_builtin_skills_all_read_without_warnings(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="nanobot.agent.skills"):
        skills = {s.name: s for s in SkillsLoader(tmp_path).list_skills()}
    assert not caplog.records
    assert {p.parent.name for p in BUILTIN_SKILLS_DIR.glob("*/SKILL.md")} == set(skills)
    assert skills["memory"].always and not skills["cron"].always
    assert skills["cron"].description == "Schedule reminders and recurring tasks with the cron tool."


def test_multi_line_and_quoted_front_matter(workspace: Path) -> None:
    write_skill(workspace, "deploy", (
        "---\n"
        'name: "deploy: staging"\n'
        "description: >\n"
        "  Deploy the app to staging,\n"
        "  then check the health endpoint.\n"
        "tags: [ops, 'ci']\n"
        "always: false\n"
        "---\n"
        "Run `make deploy`.\n"
    ))
    write_skill(workspace, "notes", (
        "---\r\n"
        "name: notes\r\n"
        "description: 'It''s about <notes> & lists'\r\n"
        "always: true\r\n"
        "---\r\n"
        "Keep notes in notes.md.\r\n"
    ))
    skills = {s.name: s for s in loader(workspace).list_skills()}
    assert skills["deploy: staging"].description == "Deploy the app to staging, then check the health endpoint."
    assert not skills["deploy: staging"].always
    assert skills["notes"].description == "It's about <notes> & lists" and skills["notes"].always
    assert skills["notes"].body() == "Keep notes in notes.md."

    summary = loader(workspace).summary()
    assert "### Skill: notes\nKeep notes in notes.md." in summary
    assert '<skill name="deploy: staging"' in summary
    assert ">Deploy the app to staging, then check the health endpoint.</skill>" in summary
    assert "name: notes" not in summary  # the front matter is not part of the body


def test_literal_block_description_is_one_line_in_the_index(workspace: Path) -> None:
    write_skill(workspace, "multi", "---\ndescription: |\n  line one\n  line two\n---\nbody\n")
    (skill,) = loader(workspace).list_skills()
    assert skill.name == "multi" and skill.description == "line one\nline two"
    assert ">line one line two</skill>" in loader(workspace).summary()


def test_upstream_metadata_json_in_yaml(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_skill(workspace, "weather", (
        "---\n"
        "name: weather\n"
        "description: Get current weather and forecasts (no API key required).\n"
        "homepage: https://wttr.in/:help\n"
        'metadata: {"nanobot":{"emoji":"🌤️","requires":{"bins":["curl"]}}}\n'
        "---\n"
        "curl wttr.in\n"
    ))
    write_skill(workspace, "summarize", (
        "---\n"
        "name: summarize\n"
        "description: Summarise long texts.\n"
        'metadata: \'{"nanobot": {"always": true, "requires": {"bins": ["no-such-program-xyz"]}}}\'\n'
        "---\n"
        "Summarise.\n"
    ))
    write_skill(workspace, "tmux", (
        "---\n"
        "name: tmux\n"
        "description: Remote-control tmux sessions.\n"
        'metadata: {"openclaw": {"requires": {"bins": ["no-such-program-xyz", "sh"]}}}\n'
        "---\n"
        "tmux\n"
    ))
    skills = {s.name: s for s in loader(workspace).list_skills()}
    assert skills["weather"].requires_bins == ["curl"]
    assert skills["summarize"].always and skills["summarize"].requires_bins == ["no-such-program-xyz"]
    assert skills["tmux"].missing_bins() == ["no-such-program-xyz"]

    monkeypatch.setenv("PATH", "/nonexistent")
    summary = loader(workspace).summary()
    assert "### Skill: summarize\nSummarise." in summary
    assert '<skill name="weather"' in summary and 'unavailable="needs curl"' in summary
    assert 'unavailable="needs no-such-program-xyz, sh"' in summary


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("---\nname: broken\ndescription: [unclosed\n---\nbody\n", "invalid YAML"),
        ("---\nname: broken\ndescription: never closed\n", "no closing '---'"),
        ("---\n- a\n- list\n---\nbody\n", "expected a mapping"),
        ("---\nname: broken\ndescription: [a, list]\n---\nbody\n", "'description' must be text"),
        ("---\nname: broken\nalways: sometimes\n---\nbody\n", "'always' must be true or false"),
        ("---\nname: broken\nmetadata: '{not json'\n---\nbody\n", "'metadata' is not a JSON object"),
        ("---\nname: broken\nmetadata: {nanobot: {requires: {bins: curl}}}\n---\nbody\n", "requires.bins"),
        ("---\nname: broken\ndescription: !!python/object/apply:os.system ['true']\n---\nbody\n", "invalid YAML"),
    ],
)
def test_broken_front_matter_is_skipped_with_a_warning(
    workspace: Path, caplog: pytest.LogCaptureFixture, text: str, reason: str
) -> None:
    broken = write_skill(workspace, "broken", text)
    write_skill(workspace, "fine", "---\nname: fine\ndescription: still here\nalways: true\n---\nFine body.\n")
    with caplog.at_level(logging.WARNING, logger="nanobot.agent.skills"):
        skills = loader(workspace).list_skills()
        summary = loader(workspace).summary()
    assert [s.name for s in skills] == ["fine"]
    assert "### Skill: fine\nFine body." in summary and "broken" not in summary
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and all(str(broken) in w and reason in w for w in warnings), warnings


def test_no_front_matter_means_the_folder_name_and_the_whole_text(workspace: Path) -> None:
    write_skill(workspace, "plain", "Just instructions, no front matter.\n")
    (skill,) = loader(workspace).list_skills()
    assert (skill.name, skill.description, skill.always) == ("plain", "", False)
    assert skill.body() == "Just instructions, no front matter."


def test_split_front_matter_raises_on_unclosed_block() -> None:
    assert split_front_matter("---\n---\nbody") == ({}, "body")
    with pytest.raises(SkillError, match="closing"):
        split_front_matter("---\nname: x\nbody")


def test_scalar_that_yaml_reads_as_a_date_or_number_is_text(workspace: Path) -> None:
    write_skill(workspace, "dated", "---\nname: 2024\ndescription: 2024-01-31\n---\nbody\n")
    (skill,) = loader(workspace).list_skills()
    assert (skill.name, skill.description) == ("2024", "2024-01-31")
