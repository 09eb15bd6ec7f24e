from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from nanobot.cron import CronJob, CronJobState, CronSchedule, CronService, next_run_ms, validate_schedule
from nanobot.cron.types import CronRecordError, store_from_dict, store_to_dict

FIXTURES = Path(__file__).parent / "fixtures"
# Written by our previous (dataclass) code through CronService: every kind of schedule, a run that succeeded
# with a reply, a run that failed, a disabled job, an `at` job to be deleted after its run.
OUR_PREVIOUS_STORE = FIXTURES / "cron_jobs_written_by_0_1.json"
# As upstream nanobot 0.3.x writes it: no `lastReply`, a `runHistory` we do not keep, no trailing newline.
UPSTREAM_STORE = FIXTURES / "cron_jobs_upstream_0_3.json"


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def _now_ms() -> int:
    return int(time.time() * 1000)


async def _wait_for(cond: Callable[[], bool], limit_s: float = 5.0) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


# ---------------------------------------------------------------------------
# schedule maths
# ---------------------------------------------------------------------------


def test_every_is_now_plus_interval() -> None:
    assert next_run_ms(CronSchedule(kind="every", every_ms=5000), 1_000) == 6_000


def test_at_only_in_future() -> None:
    s = CronSchedule(kind="at", at_ms=10_000)
    assert next_run_ms(s, 9_999) == 10_000
    assert next_run_ms(s, 10_000) is None
    assert next_run_ms(s, 20_000) is None


def test_cron_in_timezone_gives_local_nine_oclock() -> None:
    s = CronSchedule(kind="cron", expr="0 9 * * *", tz="America/New_York")
    # Winter (EST, UTC-5): 12:00 UTC is 07:00 in New York -> 09:00 local = 14:00 UTC.
    winter = _ms(datetime(2024, 1, 15, 12, 0, tzinfo=UTC))
    assert next_run_ms(s, winter) == _ms(datetime(2024, 1, 15, 14, 0, tzinfo=UTC))
    # Summer (EDT, UTC-4): 09:00 local = 13:00 UTC.
    summer = _ms(datetime(2024, 7, 15, 12, 0, tzinfo=UTC))
    assert next_run_ms(s, summer) == _ms(datetime(2024, 7, 15, 13, 0, tzinfo=UTC))
    # After 09:00 local it is the next day.
    later = _ms(datetime(2024, 1, 15, 15, 0, tzinfo=UTC))
    result = next_run_ms(s, later)
    assert result is not None
    local = datetime.fromtimestamp(result / 1000, tz=ZoneInfo("America/New_York"))
    assert (local.day, local.hour, local.minute) == (16, 9, 0)


def test_cron_is_strictly_after_now() -> None:
    s = CronSchedule(kind="cron", expr="0 9 * * *", tz="UTC")
    exactly = _ms(datetime(2024, 1, 15, 9, 0, tzinfo=UTC))
    assert next_run_ms(s, exactly) == _ms(datetime(2024, 1, 16, 9, 0, tzinfo=UTC))
    assert next_run_ms(s, exactly + 500) == _ms(datetime(2024, 1, 16, 9, 0, tzinfo=UTC))


def test_cron_default_is_local_time() -> None:
    s = CronSchedule(kind="cron", expr="30 6 * * *")
    now = _now_ms()
    result = next_run_ms(s, now)
    assert result is not None and now < result <= now + 25 * 3600 * 1000
    local = datetime.fromtimestamp(result / 1000)
    assert (local.hour, local.minute) == (6, 30)


@pytest.mark.parametrize(
    ("schedule", "fragment"),
    [
        (CronSchedule(kind="cron", expr="61 * * * *"), "invalid cron expression"),
        (CronSchedule(kind="cron", expr="not a cron"), "invalid cron expression"),
        (CronSchedule(kind="cron", expr=""), "needs a cron expression"),
        (CronSchedule(kind="cron", expr="0 9 * * *", tz="Mars/Olympus"), "unknown timezone"),
        (CronSchedule(kind="every", every_ms=1000, tz="UTC"), "timezone"),
        (CronSchedule(kind="at", at_ms=1000, tz="UTC"), "timezone"),
        (CronSchedule(kind="every", every_ms=0), "positive"),
        (CronSchedule(kind="every", every_ms=-5), "positive"),
        (CronSchedule(kind="every"), "every_ms"),
        (CronSchedule(kind="at"), "at_ms"),
        (CronSchedule.model_construct(kind="weekly"), "unknown schedule kind"),  # type: ignore[arg-type]
    ],
)
def test_validate_schedule_errors(schedule: CronSchedule, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        validate_schedule(schedule)


def test_validate_schedule_accepts_good_ones() -> None:
    validate_schedule(CronSchedule(kind="cron", expr="*/5 * * * *", tz="Europe/Paris"))
    validate_schedule(CronSchedule(kind="cron", expr="@daily"))
    validate_schedule(CronSchedule(kind="every", every_ms=1))
    validate_schedule(CronSchedule(kind="at", at_ms=1))


# ---------------------------------------------------------------------------
# types / JSON
# ---------------------------------------------------------------------------


def test_job_dict_roundtrip_and_camel_case_keys(tmp_path: Path) -> None:
    store = tmp_path / "cron" / "jobs.json"
    svc = CronService(store)
    job = svc.add_job(
        "standup",
        CronSchedule(kind="cron", expr="0 9 * * 1-5", tz="Europe/Paris"),
        "remind me",
        deliver=True,
        channel="telegram",
        to="42",
    )
    data = json.loads(store.read_text())
    assert data["version"] == 1
    (raw,) = data["jobs"]
    assert set(raw) == {
        "id",
        "name",
        "enabled",
        "schedule",
        "payload",
        "state",
        "createdAtMs",
        "updatedAtMs",
        "deleteAfterRun",
    }
    assert raw["schedule"] == {
        "kind": "cron",
        "atMs": None,
        "everyMs": None,
        "expr": "0 9 * * 1-5",
        "tz": "Europe/Paris",
    }
    assert raw["payload"] == {
        "kind": "agent_turn",
        "message": "remind me",
        "deliver": True,
        "channel": "telegram",
        "to": "42",
    }
    assert {"nextRunAtMs", "lastRunAtMs", "lastStatus", "lastError"} <= set(raw["state"])
    assert raw["state"]["nextRunAtMs"] == job.state.next_run_at_ms
    assert CronJob.from_dict(raw) == job
    assert len(job.id) == 8 and int(job.id, 16) >= 0


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda d: d.pop("id"), r"^job: id: Field required"),
        (lambda d: d.update(id=""), r"^job: id: String should have at least 1 character"),
        (lambda d: d.pop("schedule"), r"^job 'abcd1234': schedule: Field required"),
        (lambda d: d["schedule"].update(kind="hourly"), r"^job 'abcd1234': schedule.kind: Input should be 'at'"),
        (lambda d: d["schedule"].update(everyMs="often"), r"schedule.everyMs: Input should be a valid integer"),
        (lambda d: d["schedule"].update(everyMs=1.5), r"schedule.everyMs: Input should be a valid integer"),
        (lambda d: d["payload"].update(kind="shell"), r"payload.kind: Input should be 'agent_turn' \(got 'shell'\)"),
        (lambda d: d["payload"].pop("message"), r"payload.message: Field required"),
        (lambda d: d.update(enabled="yes"), r"enabled: Input should be a valid boolean \(got 'yes'\)"),
        (lambda d: d["state"].update(lastStatus="maybe"), r"state.lastStatus: Input should be 'ok' or 'error'"),
        (lambda d: d.update(createdAtMs="1"), r"createdAtMs: Input should be a valid integer"),
    ],
)
def test_from_dict_rejects_malformed_job(mutate: Callable[[dict], object], fragment: str) -> None:
    raw = {
        "id": "abcd1234",
        "name": "n",
        "enabled": True,
        "schedule": {"kind": "every", "atMs": None, "everyMs": 1000, "expr": None, "tz": None},
        "payload": {"kind": "agent_turn", "message": "hi", "deliver": False, "channel": None, "to": None},
        "state": {"nextRunAtMs": None, "lastRunAtMs": None, "lastStatus": None, "lastError": None},
        "createdAtMs": 1,
        "updatedAtMs": 1,
        "deleteAfterRun": False,
    }
    CronJob.from_dict(raw)  # the unmodified job is fine
    mutate(raw)
    with pytest.raises(ValueError, match=fragment):
        CronJob.from_dict(raw)


def test_nulls_mean_defaults_and_unknown_keys_are_ignored() -> None:
    job = CronJob.from_dict({
        "id": "j1", "name": None, "enabled": None, "state": None, "createdAtMs": None, "deleteAfterRun": None,
        "schedule": {"kind": "every", "everyMs": 5, "atMs": None}, "payload": {"message": "x", "deliver": None},
        "runHistory": [], "futureKey": 1,
    })
    assert (job.name, job.enabled, job.created_at_ms, job.delete_after_run) == ("", True, 0, False)
    assert job.state == CronJobState() and job.payload.deliver is False and job.payload.kind == "agent_turn"
    assert "runHistory" not in job.to_dict() and "futureKey" not in job.to_dict()


def test_store_rejects_bad_version_and_duplicates() -> None:
    with pytest.raises(ValueError, match="version"):
        store_from_dict({"version": 99, "jobs": []})
    job = {"id": "a", "schedule": {"kind": "every", "everyMs": 5}, "payload": {"message": "x"}}
    with pytest.raises(ValueError, match="duplicate"):
        store_from_dict({"version": 1, "jobs": [job, job]})


# ---------------------------------------------------------------------------
# service: editing and persistence
# ---------------------------------------------------------------------------


def test_add_list_remove_enable_persist_across_instances(tmp_path: Path) -> None:
    store = tmp_path / "deep" / "dir" / "jobs.json"
    a = CronService(store)
    hourly = a.add_job("hourly", CronSchedule(kind="every", every_ms=3_600_000), "check mail")
    soon = a.add_job("soon", CronSchedule(kind="every", every_ms=60_000), "drink water")
    assert store.exists()
    assert not list(store.parent.glob("*.tmp"))

    b = CronService(store)
    assert [j.id for j in b.list_jobs()] == [soon.id, hourly.id]  # sorted by next run
    assert b.list_jobs()[0].payload.message == "drink water"

    disabled = b.enable_job(soon.id, enabled=False)
    assert disabled is not None and not disabled.enabled and disabled.state.next_run_at_ms is None
    assert [j.id for j in a.list_jobs()] == [hourly.id]
    assert {j.id for j in a.list_jobs(include_disabled=True)} == {soon.id, hourly.id}

    before = _now_ms()
    enabled = a.enable_job(soon.id)
    assert enabled is not None and enabled.enabled
    assert enabled.state.next_run_at_ms is not None and enabled.state.next_run_at_ms >= before + 60_000
    assert b.get_job(soon.id) == enabled

    assert b.remove_job(hourly.id) is True
    assert b.remove_job(hourly.id) is False
    assert a.enable_job("nope") is None
    assert [j.id for j in CronService(store).list_jobs(include_disabled=True)] == [soon.id]

    status = a.status()
    assert status["jobs"] == 1 and status["enabled"] is False
    assert status["next_wake_at_ms"] == enabled.state.next_run_at_ms


def test_add_job_validates(tmp_path: Path) -> None:
    svc = CronService(tmp_path / "jobs.json")
    with pytest.raises(ValueError, match="invalid cron"):
        svc.add_job("bad", CronSchedule(kind="cron", expr="0 25 * * *"), "x")
    with pytest.raises(ValueError, match="message"):
        svc.add_job("empty", CronSchedule(kind="every", every_ms=1000), "  ")
    assert not (tmp_path / "jobs.json").exists()


def test_list_jobs_without_store_file(tmp_path: Path) -> None:
    svc = CronService(tmp_path / "missing" / "jobs.json")
    assert svc.list_jobs(include_disabled=True) == []
    assert svc.status()["jobs"] == 0
    assert not (tmp_path / "missing").exists()


# ---------------------------------------------------------------------------
# service: timer
# ---------------------------------------------------------------------------


def test_timer_fires_every_job_repeatedly(tmp_path: Path) -> None:
    calls: list[CronJob] = []

    async def on_job(job: CronJob) -> str:
        calls.append(job)
        return f"done {len(calls)}"

    async def main() -> None:
        svc = CronService(tmp_path / "jobs.json", on_job=on_job)
        job = svc.add_job("tick", CronSchedule(kind="every", every_ms=200), "tick")
        await svc.start()
        assert svc.status()["enabled"] is True
        try:
            await _wait_for(lambda: len(calls) >= 3)
        finally:
            await svc.stop()
        assert not svc.running
        assert all(c.id == job.id and c.payload.message == "tick" for c in calls)
        stored = CronService(tmp_path / "jobs.json").get_job(job.id)
        assert stored is not None and stored.enabled
        assert stored.state.last_status == "ok"
        assert stored.state.last_reply is not None and stored.state.last_reply.startswith("done")
        assert stored.state.next_run_at_ms is not None and stored.state.last_run_at_ms is not None

    asyncio.run(main())


@pytest.mark.parametrize("delete_after_run", [False, True])
def test_timer_fires_at_job_once(tmp_path: Path, delete_after_run: bool) -> None:
    calls: list[str] = []

    async def on_job(job: CronJob) -> None:
        calls.append(job.id)

    async def main() -> None:
        svc = CronService(tmp_path / "jobs.json", on_job=on_job)
        job = svc.add_job(
            "once",
            CronSchedule(kind="at", at_ms=_now_ms() + 200),
            "one shot",
            delete_after_run=delete_after_run,
        )
        await svc.start()
        try:
            await _wait_for(lambda: len(calls) >= 1)
            await asyncio.sleep(0.6)
        finally:
            await svc.stop()
        assert calls == [job.id]
        stored = CronService(tmp_path / "jobs.json").get_job(job.id)
        if delete_after_run:
            assert stored is None
        else:
            assert stored is not None and not stored.enabled
            assert stored.state.next_run_at_ms is None and stored.state.last_status == "ok"

    asyncio.run(main())


def test_job_added_by_other_instance_is_picked_up(tmp_path: Path) -> None:
    store = tmp_path / "jobs.json"
    calls: list[str] = []

    async def on_job(job: CronJob) -> None:
        calls.append(job.payload.message)

    async def main() -> None:
        gateway = CronService(store, on_job=on_job)
        await gateway.start()
        try:
            await asyncio.sleep(0.1)
            cli = CronService(store)  # as `nanobot cron add` would do in another process
            cli.add_job("from cli", CronSchedule(kind="every", every_ms=200), "hello from cli")
            await _wait_for(lambda: len(calls) >= 2, limit_s=5)
            # Removing it through the CLI stops it too.
            assert cli.remove_job(cli.list_jobs()[0].id)
            await asyncio.sleep(1.2)  # the gateway notices the change within a second
            count = len(calls)
            await asyncio.sleep(0.4)
            assert len(calls) == count
        finally:
            await gateway.stop()
        assert set(calls) == {"hello from cli"}
        assert CronService(store).list_jobs(include_disabled=True) == []

    asyncio.run(main())


def test_failing_job_is_recorded_and_service_keeps_going(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []

    async def on_job(job: CronJob) -> str:
        calls.append(job.name)
        if job.name == "bad":
            raise RuntimeError("boom")
        return "fine"

    async def main() -> None:
        svc = CronService(tmp_path / "jobs.json", on_job=on_job)
        bad = svc.add_job("bad", CronSchedule(kind="every", every_ms=200), "fail")
        good = svc.add_job("good", CronSchedule(kind="every", every_ms=200), "work")
        await svc.start()
        try:
            await _wait_for(lambda: calls.count("bad") >= 2 and calls.count("good") >= 2)
        finally:
            await svc.stop()
        bad_job = svc.get_job(bad.id)
        good_job = svc.get_job(good.id)
        assert bad_job is not None and bad_job.enabled
        assert bad_job.state.last_status == "error"
        assert bad_job.state.last_error is not None and "boom" in bad_job.state.last_error
        assert good_job is not None and good_job.state.last_status == "ok" and good_job.state.last_error is None

    with caplog.at_level(logging.ERROR, logger="nanobot.cron.service"):
        asyncio.run(main())
    assert any("failed" in r.getMessage() for r in caplog.records)


def test_job_never_runs_twice_concurrently(tmp_path: Path) -> None:
    active = 0
    peak = 0
    runs = 0

    async def on_job(job: CronJob) -> None:
        nonlocal active, peak, runs
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.3)
        active -= 1
        runs += 1

    async def main() -> None:
        svc = CronService(tmp_path / "jobs.json", on_job=on_job)
        job = svc.add_job("slow", CronSchedule(kind="every", every_ms=20), "slow")
        await svc.start()
        try:
            await _wait_for(lambda: active == 1)
            assert await svc.run_job(job.id) is False  # already running
            await _wait_for(lambda: runs >= 2)
        finally:
            await svc.stop()

    asyncio.run(main())
    assert peak == 1


def test_run_job_now_and_force(tmp_path: Path) -> None:
    calls: list[str] = []

    async def on_job(job: CronJob) -> str:
        calls.append(job.id)
        return "x" * 5000

    async def main() -> None:
        svc = CronService(tmp_path / "jobs.json", on_job=on_job)
        job = svc.add_job("daily", CronSchedule(kind="cron", expr="0 9 * * *", tz="UTC"), "report")
        svc.enable_job(job.id, enabled=False)
        assert await svc.run_job("missing") is False
        assert await svc.run_job(job.id) is False
        assert calls == []
        assert await svc.run_job(job.id, force=True) is True
        assert calls == [job.id]
        stored = CronService(tmp_path / "jobs.json").get_job(job.id)
        assert stored is not None and not stored.enabled and stored.state.next_run_at_ms is None
        assert stored.state.last_status == "ok"
        assert stored.state.last_reply is not None and len(stored.state.last_reply) <= 500

    asyncio.run(main())


def test_missed_jobs_on_start(tmp_path: Path) -> None:
    """While no process ran: a past `at` job fires once, a past `every` job is just rescheduled."""
    store = tmp_path / "jobs.json"
    cli = CronService(store)
    missed_at = cli.add_job("missed at", CronSchedule(kind="at", at_ms=_now_ms() + 50), "late")
    every = cli.add_job("hourly", CronSchedule(kind="every", every_ms=3_600_000), "hourly")
    # Pretend the process was down: push the stored next runs into the past.
    data = json.loads(store.read_text())
    for raw in data["jobs"]:
        raw["state"]["nextRunAtMs"] = _now_ms() - 10_000
    store.write_text(json.dumps(data))
    time.sleep(0.1)

    calls: list[str] = []

    async def on_job(job: CronJob) -> None:
        calls.append(job.id)

    async def main() -> None:
        svc = CronService(store, on_job=on_job)
        before = _now_ms()
        await svc.start()
        try:
            await _wait_for(lambda: len(calls) >= 1)
            await asyncio.sleep(0.4)
        finally:
            await svc.stop()
        hourly = svc.get_job(every.id)
        assert hourly is not None and hourly.state.next_run_at_ms is not None
        assert hourly.state.next_run_at_ms >= before + 3_600_000
        assert hourly.state.last_run_at_ms is None

    asyncio.run(main())
    assert calls == [missed_at.id]


# ---------------------------------------------------------------------------
# service: corrupt store
# ---------------------------------------------------------------------------


def test_corrupt_store_is_kept_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = tmp_path / "jobs.json"
    garbage = '{"version": 1, "jobs": [ this is not json'
    store.write_text(garbage)
    svc = CronService(store)
    with caplog.at_level(logging.ERROR, logger="nanobot.cron.service"):
        assert svc.list_jobs(include_disabled=True) == []
    assert any(str(store) in r.getMessage() and "malformed" in r.getMessage() for r in caplog.records)
    assert store.read_text() == garbage  # untouched while only reading

    job = svc.add_job("new", CronSchedule(kind="every", every_ms=60_000), "fresh start")
    (kept,) = list(tmp_path.glob("jobs.json.corrupt-*"))
    assert kept.read_text() == garbage
    assert [j.id for j in CronService(store).list_jobs()] == [job.id]


def test_corrupt_store_with_bad_job_at_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = tmp_path / "jobs.json"
    bad = {"version": 1, "jobs": [{"id": "x1", "schedule": {"kind": "every", "everyMs": -1}, "payload": {}}]}
    store.write_text(json.dumps(bad))
    original = store.read_text()

    async def main() -> None:
        svc = CronService(store, on_job=None)
        with caplog.at_level(logging.ERROR, logger="nanobot.cron.service"):
            await svc.start()
            await asyncio.sleep(0.2)
        await svc.stop()

    asyncio.run(main())
    assert store.read_text() == original
    assert any(str(store) in r.getMessage() for r in caplog.records)
    assert not list(tmp_path.glob("jobs.json.corrupt-*"))


def test_bad_kind_is_refused_when_built() -> None:
    with pytest.raises(ValueError, match="kind"):
        CronSchedule(kind="weekly")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# existing stores
# ---------------------------------------------------------------------------


def test_store_written_by_our_previous_code_loads_and_is_rewritten_byte_for_byte() -> None:
    text = OUR_PREVIOUS_STORE.read_text(encoding="utf-8")
    jobs = store_from_dict(json.loads(text))
    assert [j.name for j in jobs] == ["standup", "water", "once", "fails", "paused"]
    assert json.dumps(store_to_dict(jobs), indent=2, ensure_ascii=False) + "\n" == text


def test_store_written_by_our_previous_code_loads_in_the_service(tmp_path: Path) -> None:
    store = tmp_path / "jobs.json"
    store.write_bytes(OUR_PREVIOUS_STORE.read_bytes())
    jobs = {j.name: j for j in CronService(store).list_jobs(include_disabled=True)}
    assert set(jobs) == {"standup", "water", "once", "fails", "paused"}
    standup, water, once, fails, paused = (jobs[n] for n in ("standup", "water", "once", "fails", "paused"))
    assert (standup.schedule.expr, standup.schedule.tz) == ("0 9 * * 1-5", "Europe/Paris")
    assert (standup.payload.deliver, standup.payload.channel, standup.payload.to) == (True, "telegram", "42")
    assert water.schedule.every_ms == 3_600_000 and water.state.last_status == "ok"
    assert water.state.last_reply == "Done: watered the plants ✔"
    assert once.schedule.at_ms == 4_102_444_800_000 and once.delete_after_run
    assert (fails.state.last_status, fails.state.last_error) == ("error", "RuntimeError: boom")
    assert not paused.enabled and paused.state.next_run_at_ms is None
    assert store.read_bytes() == OUR_PREVIOUS_STORE.read_bytes()  # reading never rewrites


def test_store_written_by_upstream_loads_and_survives_a_write(tmp_path: Path) -> None:
    store = tmp_path / "jobs.json"
    store.write_bytes(UPSTREAM_STORE.read_bytes())
    svc = CronService(store)
    before = {j.id: j for j in svc.list_jobs(include_disabled=True)}
    assert set(before) == {"3f2a9c1e", "b7e41d02"}
    briefing = before["3f2a9c1e"]
    assert (briefing.schedule.kind, briefing.schedule.expr, briefing.schedule.tz) == ("cron", "0 8 * * *",
                                                                                      "Asia/Shanghai")
    assert briefing.payload.to == "123456789" and briefing.state.last_run_at_ms == 1767139200000
    assert briefing.state.last_reply is None and not before["b7e41d02"].enabled

    svc.enable_job("b7e41d02")
    after = {j.id: j for j in CronService(store).list_jobs(include_disabled=True)}
    assert after["3f2a9c1e"] == briefing and after["b7e41d02"].enabled
    written = json.loads(store.read_text())
    assert written["version"] == 1 and "lastReply" in written["jobs"][0]["state"]


def test_one_bad_job_does_not_lose_the_others(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = tmp_path / "jobs.json"
    good = json.loads(UPSTREAM_STORE.read_text())["jobs"][0]
    bad_key = {**good, "id": "badkey01", "enabled": "sometimes"}
    bad_schedule = {**good, "id": "badcron1", "schedule": {"kind": "cron", "expr": "0 25 * * *"}}
    duplicate = {**good, "name": "a second job with the first one's id"}
    store.write_text(json.dumps({"version": 1, "jobs": [good, bad_key, bad_schedule, duplicate, 42]}))

    svc = CronService(store)
    with caplog.at_level(logging.ERROR, logger="nanobot.cron.service"):
        assert [j.id for j in svc.list_jobs(include_disabled=True)] == [good["id"]]
    errors = [r.getMessage() for r in caplog.records]
    assert any(str(store) in e and "job 'badkey01': enabled: Input should be a valid boolean" in e for e in errors)
    assert any("job 'badcron1': schedule: invalid cron expression" in e for e in errors)
    assert any(f"job {good['id']!r}: duplicate id" in e for e in errors)
    assert any("jobs[4]: (record): Input should be a valid dictionary" in e for e in errors)

    added = svc.add_job("new", CronSchedule(kind="every", every_ms=60_000), "still works")
    assert not list(tmp_path.glob("jobs.json.corrupt-*"))
    kept = json.loads(store.read_text())["jobs"]
    assert [j.get("id") if isinstance(j, dict) else j for j in kept] == [good["id"], added.id, "badkey01",
                                                                         "badcron1", good["id"], 42]
    assert kept[2:] == [bad_key, bad_schedule, duplicate, 42]  # unchanged, for the operator to fix
    assert {j.id for j in CronService(store).list_jobs()} == {good["id"], added.id}

    assert svc.remove_job("badkey01") is True  # a rejected record can be removed by its id
    assert "badkey01" not in store.read_text() and "badcron1" in store.read_text()


def test_whole_store_errors_name_the_problem() -> None:
    for data, fragment in [([], "expected an object"), ({"version": 2}, "unsupported version"),
                           ({"jobs": {}}, "'jobs' must be a list")]:
        with pytest.raises(CronRecordError, match=fragment):
            store_from_dict(data)


def test_cron_tool_reports_a_refused_schedule_as_an_error(tmp_path: Path) -> None:
    from nanobot.agent.tools.cron import CronTool

    tool = CronTool(CronService(tmp_path / "jobs.json"))
    bad_expr = asyncio.run(tool.execute(action="add", message="x", cron_expr="0 25 * * *"))
    bad_zone = asyncio.run(tool.execute(action="add", message="x", cron_expr="0 9 * * *", tz="Mars/Olympus"))
    assert bad_expr.startswith("Error: invalid cron expression '0 25 * * *'")
    assert bad_zone.startswith("Error: unknown timezone 'Mars/Olympus'")
    assert not (tmp_path / "jobs.json").exists()
    assert asyncio.run(tool.execute(action="add", message="x", every_seconds=60)).startswith("Scheduled job ")
