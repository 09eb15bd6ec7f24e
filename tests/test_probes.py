"""The gateway's probes: /health (live while the process serves) and /ready (Redis answers, the outbound reader
and every enabled channel run, or in local mode the agent loop); real gateway processes, real Redis, real HTTP."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from nanobot.gateway.http import GatewayHttp
from nanobot.testing.llm_server import FakeLLM
from nanobot.testing.processes import Process, free_port, nanobot, wait_http_ok
from tests.cluster import wait_for
from tests.conftest import write_config
from tests.private_redis import StoppableRedis

API_KEY = "probe-key"


def get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=10, trust_env=False)


def test_ready_follows_redis_and_health_stays_live(cluster_factory: Any, stoppable_redis: StoppableRedis) -> None:
    port = free_port()
    cluster = cluster_factory(redis_url=stoppable_redis.url, redisUrl=stoppable_redis.url,
                              sections={"gateway": {"heartbeat": {"enabled": False}, "port": port}})
    cluster.start_gateway()
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: get(f"{base}/ready").status_code == 200, 20, "the gateway to be ready")
    assert get(f"{base}/ready").json() == {"status": "ready"}

    stoppable_redis.stop()
    wait_for(lambda: get(f"{base}/ready").status_code == 503, 20, "/ready to turn 503")
    body = get(f"{base}/ready").json()
    assert body["status"] == "not ready"
    assert any("redis" in reason.lower() for reason in body["reasons"]), body
    health = get(f"{base}/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    # /metrics still answers while Redis is away (the backlog gauges keep their last values).
    assert get(f"{base}/metrics").status_code == 200

    stoppable_redis.start()
    wait_for(lambda: get(f"{base}/ready").status_code == 200, 30, "/ready to return to 200")
    assert get(f"{base}/health").status_code == 200
    cluster.start_worker()
    assert cluster.chat("after redis came back", "probe").status_code == 200


def test_local_gateway_serves_core_metrics_and_is_ready(tmp_path: Path, fake_llm: FakeLLM) -> None:
    api_port, port = free_port(), free_port()
    config = write_config(
        tmp_path, fake_llm.base_url,
        channels={"api": {"enabled": True, "port": api_port, "apiKey": API_KEY, "timeoutS": 20}},
        gateway={"heartbeat": {"enabled": False}, "port": port},
    )
    proc = Process(nanobot("gateway"), tmp_path / "gateway.log", env={"NANOBOT_CONFIG": str(config)})
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/health", 30, proc)
        wait_for(lambda: get(f"http://127.0.0.1:{port}/ready").status_code == 200, 20, "the gateway to be ready")
        assert get(f"http://127.0.0.1:{port}/ready").json() == {"status": "ready"}
        reply = httpx.post(
            f"http://127.0.0.1:{api_port}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hello"}], "session_id": "local"},
            headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30, trust_env=False,
        )
        assert reply.status_code == 200, reply.text
        text = get(f"http://127.0.0.1:{port}/metrics").text
        families = {family.name: family for family in text_string_to_metric_families(text)}
        for name in ("nanobot_turns", "nanobot_turn_duration_seconds", "nanobot_llm_requests",
                     "nanobot_inbound_messages", "nanobot_outbound_messages"):
            assert name in families, sorted(families)
        samples = {(s.name, frozenset(s.labels.items())): s.value for f in families.values() for s in f.samples}
        assert samples[("nanobot_inbound_messages_total", frozenset({("channel", "api"), ("outcome", "ok")}))] == 1
        # Distributed-only gauges are not reported by a local gateway.
        assert "nanobot_backlog_messages" not in families or not families["nanobot_backlog_messages"].samples
    finally:
        proc.stop()


def test_ready_route_answers_503_with_every_reason() -> None:
    async def scenario() -> None:
        reasons: list[str] = []

        async def not_ready() -> list[str]:
            if reasons == ["boom"]:
                raise RuntimeError("check crashed")
            return list(reasons)

        http = GatewayHttp("127.0.0.1", 0, ready=not_ready)
        await http.start()
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http.port}", trust_env=False) as client:
                ok = await client.get("/ready")
                assert (ok.status_code, ok.json()) == (200, {"status": "ready"})
                reasons.extend(["redis: no answer to PING within 1s", "channel api not running"])
                bad = await client.get("/ready")
                assert bad.status_code == 503
                assert bad.json() == {"status": "not ready", "reasons": reasons}
                reasons[:] = ["boom"]
                crashed = await client.get("/ready")
                assert crashed.status_code == 503 and "RuntimeError" in crashed.json()["reasons"][0]
                assert (await client.get("/health")).json() == {"status": "ok"}
                assert (await client.get("/metrics")).status_code == 200
        finally:
            await http.stop()

    asyncio.run(scenario())
