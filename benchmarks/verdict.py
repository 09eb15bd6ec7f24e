"""The correctness checks, judged only from what the simulated LLM received and what each user got
back: never from the system's own logs or state."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from benchmarks.load import User, turn_text
from nanobot.testing.llm_server import RecordedRequest


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


def calls_by_turn(users: list[User], records: list[RecordedRequest]) -> dict[tuple[int, int], list[RecordedRequest]]:
    """The simulated LLM's requests for each (user, turn), in arrival order."""
    known = {t.text: (t.user, t.index) for u in users for t in u.turns}
    found: dict[tuple[int, int], list[RecordedRequest]] = {}
    for record in sorted(records, key=lambda r: r.received_at):
        owner = known.get(record.last_user_text)
        if owner is not None:
            found.setdefault(owner, []).append(record)
    return found


def _expected_history(user: int, turn: int) -> list[tuple[str, str]]:
    history: list[tuple[str, str]] = []
    for t in range(turn):
        history += [("user", turn_text(user, t)), ("assistant", f"echo: {turn_text(user, t)}")]
    return [*history, ("user", turn_text(user, turn))]


def _conversation(record: RecordedRequest) -> list[tuple[str, str]]:
    return [(str(m.get("role")), str(m.get("content"))) for m in record.messages if m.get("role") != "system"]


def judge(users: list[User], records: list[RecordedRequest], rerun_allowed: bool = False) -> list[Check]:
    """`rerun_allowed`: a turn whose worker was killed mid-turn may reach the LLM again (chaos drill);
    it must still be answered exactly once and recorded once."""
    calls = calls_by_turn(users, records)
    turns = [t for u in users for t in u.turns]
    lost = [t for t in turns if t.reply is None]
    wrong = [t for t in turns if t.reply is not None and t.reply != f"echo: {t.text}"]
    why = next((t.error for t in lost if t.error), None)  # what the first unanswered turn got instead
    checks = [Check("every user got the reply to their own message, once", not lost and not wrong,
                    f"{len(turns)} turns: {len(wrong)} wrong, {len(lost)} unanswered"
                    + (f" (first: {why[:120]})" if why else ""))]

    mixed = sum(
        1
        for (user, _), reqs in calls.items()
        for r in reqs
        for _, content in _conversation(r)
        if not content.removeprefix("echo: ").startswith(f"user {user} ")
    )
    checks.append(Check("no conversation saw another's messages", mixed == 0, f"{mixed} foreign messages"))

    bad_history = sum(1 for (u, t), reqs in calls.items() for r in reqs if _conversation(r) != _expected_history(u, t))
    checks.append(Check("each turn carried its conversation's full history, each turn once", bad_history == 0,
                        f"{bad_history} LLM calls with a wrong history"))

    overlaps = 0
    out_of_order = 0
    for user in users:
        reqs = [r for t in range(len(user.turns)) for r in calls.get((user.index, t), [])]
        ordered = sorted(reqs, key=lambda r: r.received_at)
        overlaps += sum(1 for a, b in itertools.pairwise(ordered) if b.received_at < a.finished_at)
        firsts = [calls[(user.index, t)][0].received_at for t in range(len(user.turns)) if (user.index, t) in calls]
        out_of_order += sum(1 for a, b in itertools.pairwise(firsts) if b < a)
    checks.append(Check("one turn at a time per conversation", overlaps == 0, f"{overlaps} overlapping LLM calls"))

    missing = sum(1 for t in turns if (t.user, t.index) not in calls)
    reruns = sum(len(v) - 1 for v in calls.values())
    run_once = missing == 0 and out_of_order == 0 and (rerun_allowed or reruns == 0)
    detail = f"{sum(len(v) for v in calls.values())} LLM calls for {len(turns)} turns; {out_of_order} out of order"
    if reruns:
        detail += f"; {reruns} re-run after their worker died" if rerun_allowed else f"; {reruns} run twice"
    checks.append(Check("turns in order, each reached the LLM" + ("" if rerun_allowed else " once"), run_once, detail))
    return checks
