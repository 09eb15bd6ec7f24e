"""A worker's liveness probe for compose healthchecks and `exec` probes: `python -m nanobot_celery.probe` GETs
the worker's /health (http://127.0.0.1:<bus.worker.metricsPort>/health, or `--url`), exits 0 on 200 and 1
otherwise, with one line on stderr saying why. Kubernetes can call /health with an httpGet probe instead."""

from __future__ import annotations

import sys
from typing import Annotated

import httpx
import typer

from nanobot.config import load_config
from nanobot.config.loader import ConfigError

_WILDCARDS = ("", "0.0.0.0", "::", "[::]")


def health_url() -> str:
    """The worker's /health from nanobot's config (ValueError when the server is turned off)."""
    worker = load_config().bus.worker
    if not worker.metrics_port:
        raise ValueError("bus.worker.metricsPort is 0: this worker serves no /health")
    host = "127.0.0.1" if worker.metrics_host in _WILDCARDS else worker.metrics_host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{worker.metrics_port}/health"


def check(url: str, timeout_s: float) -> tuple[bool, str]:
    """(healthy, why) for one GET of `url`."""
    try:
        response = httpx.get(url, timeout=timeout_s, trust_env=False)
    except httpx.HTTPError as exc:
        return False, f"{url}: {type(exc).__name__}: {exc}"
    if response.status_code == 200:
        return True, f"{url}: healthy"
    try:
        reason = str(response.json().get("reason") or response.text)
    except ValueError:
        reason = response.text[:200]
    return False, f"{url}: HTTP {response.status_code}: {reason}"


def main(
    url: Annotated[str | None, typer.Option("--url", help="The /health URL (default: from the config).")] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for the answer.")] = 5.0,
) -> None:
    """Exit 0 when the worker's /health answers 200, else 1."""
    if url is None:
        try:
            url = health_url()
        except (ConfigError, ValueError) as exc:
            print(f"unhealthy: {exc}", file=sys.stderr)
            raise typer.Exit(1) from None
    healthy, why = check(url, timeout)
    print(why if healthy else f"unhealthy: {why}", file=sys.stderr)
    raise typer.Exit(0 if healthy else 1)


if __name__ == "__main__":
    typer.run(main)
