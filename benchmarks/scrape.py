"""What the system says about itself during a run, read from its Prometheus endpoints: the gateway's backlog
(sampled while the load runs) and, at the end, the dead letters and the turns the metrics counted.

The checks stay judged from the simulated LLM and the users' replies (benchmarks/verdict.py); these figures are
reported beside them, and `metrics agree` checks the operator's view against what the users saw.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by (name, sorted labels)."""
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def total(values: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in values.items() if n == name and want <= set(ls))


async def scrape(client: httpx.AsyncClient, url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await client.get(url)
    response.raise_for_status()
    return samples(response.text)


@dataclass
class Backlog:
    peak_waiting: float = 0.0
    peak_in_flight: float = 0.0
    peak_oldest_age_s: float = 0.0
    end_waiting: float = 0.0
    end_in_flight: float = 0.0
    dead_letters: float = 0.0
    turns_counted: float = 0.0  # nanobot_turns_total over the processes that run turns
    redeliveries: float = 0.0
    samples: int = 0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


class BacklogWatch:
    """Samples the gateway's /metrics every `interval_s` while the load runs (distributed mode only)."""

    def __init__(self, gateway_url: str, turn_urls: list[str], distributed: bool, interval_s: float = 1.0) -> None:
        self.gateway_url = gateway_url
        self.turn_urls = turn_urls  # where turns are counted: the workers' /metrics, or the local gateway's
        self.distributed = distributed
        self.interval_s = interval_s
        self.backlog = Backlog()
        self._task: asyncio.Task[None] | None = None
        self._client = httpx.AsyncClient(timeout=10, trust_env=False)

    def start(self) -> BacklogWatch:
        if self.distributed:
            self._task = asyncio.create_task(self._sample_forever())
        return self

    async def _sample_forever(self) -> None:
        while True:
            try:
                self._note(await scrape(self._client, self.gateway_url), end=False)
            except httpx.HTTPError:
                pass  # a gateway restart (chaos) or a slow scrape: the next sample counts
            await asyncio.sleep(self.interval_s)

    def _note(self, values: dict[tuple[str, tuple[tuple[str, str], ...]], float], end: bool) -> None:
        b = self.backlog
        waiting = total(values, "nanobot_backlog_messages", state="waiting")
        in_flight = total(values, "nanobot_backlog_messages", state="in_flight")
        b.peak_waiting = max(b.peak_waiting, waiting)
        b.peak_in_flight = max(b.peak_in_flight, in_flight)
        b.peak_oldest_age_s = max(b.peak_oldest_age_s, total(values, "nanobot_backlog_oldest_age_seconds"))
        b.samples += 1
        if end:
            b.end_waiting, b.end_in_flight = waiting, in_flight
            b.dead_letters = total(values, "nanobot_dead_letters")

    async def stop(self, settle_s: float = 1.5) -> Backlog:
        """Stop sampling and read the end state (after `settle_s`: the gateway caches its backlog ~1 s)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            if self.distributed:
                await asyncio.sleep(settle_s)
                self._note(await scrape(self._client, self.gateway_url), end=True)
            for url in self.turn_urls:
                values = await scrape(self._client, url)
                self.backlog.turns_counted += total(values, "nanobot_turns_total")
                self.backlog.redeliveries += total(values, "nanobot_redeliveries_total")
        except httpx.HTTPError:
            pass
        finally:
            await self._client.aclose()
        return self.backlog
