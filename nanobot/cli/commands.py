"""The `nanobot` command line."""

from __future__ import annotations

import asyncio
import os
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markdown import Markdown
from rich.table import Table

from nanobot import __logo__, __version__
from nanobot.cli.conversations import conversations_app
from nanobot.cli.deadletters import deadletters_app
from nanobot.cli.output import console, err, fail
from nanobot.cli.preflight import require_redis
from nanobot.config.loader import ConfigError, config_path, cron_store_path, load_config, save_config
from nanobot.config.schema import Config
from nanobot.logs import chosen_format, setup_logging

app = typer.Typer(name="nanobot", help=f"{__logo__} nanobot - a personal AI assistant", no_args_is_help=True)
cron_app = typer.Typer(help="Scheduled jobs.", no_args_is_help=True)
channels_app = typer.Typer(help="Chat channels.", no_args_is_help=True)
sessions_app = typer.Typer(help="Conversation histories (file and Redis stores).", no_args_is_help=True)
app.add_typer(cron_app, name="cron")
app.add_typer(channels_app, name="channels")
app.add_typer(sessions_app, name="sessions")
app.add_typer(deadletters_app, name="deadletters")
app.add_typer(conversations_app, name="conversations")


def _version(value: bool) -> None:
    if value:
        console.print(f"{__logo__} nanobot {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Config file (default: $NANOBOT_CONFIG or ~/.nanobot/config.json)."),
    ] = None,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True)] = False,
) -> None:
    if config is not None:
        os.environ["NANOBOT_CONFIG"] = str(config.expanduser())


def _load() -> Config:
    try:
        return load_config()
    except ConfigError as exc:
        err.print(f"[red]Config error:[/red] {exc}")
        raise typer.Exit(2) from exc


# ---------------------------------------------------------------------------- onboard
@app.command()
def onboard() -> None:
    """Create (or complete) the config file and the workspace."""
    from nanobot.agent.workspace import init_workspace

    path = config_path()
    existed = path.exists()
    config = _load()
    save_config(config, path)
    created = init_workspace(config.workspace_path)
    console.print(f"{__logo__} config {'updated' if existed else 'created'}: {path}")
    console.print(f"   workspace: {config.workspace_path} ({len(created)} file(s) created)")
    console.print("Next: put an API key in providers.<name>.apiKey, then run `nanobot agent -m \"Hello\"`.")


# ---------------------------------------------------------------------------- agent
def _make_agent(config: Config) -> Any:
    from nanobot.agent.loop import AgentLoop
    from nanobot.bus.queue import MessageBus
    from nanobot.cron.service import CronService
    from nanobot.providers.factory import create_provider
    from nanobot.providers.registry import NoProviderError

    try:
        provider = create_provider(config)
    except NoProviderError as exc:
        raise fail(str(exc)) from exc
    extra: dict[str, Any] = {}
    if config.bus.backend == "celery":
        # Same lock and history as the workers: this turn queues behind theirs for the same session.
        import redis.asyncio as aioredis

        from nanobot.session.factory import shared_turn_options

        require_redis(config)
        extra = shared_turn_options(config, aioredis.Redis.from_url(config.bus.redis_url, decode_responses=True))
    return AgentLoop.from_config(config, MessageBus(), provider, cron_service=CronService(cron_store_path()), **extra)


@app.command()
def agent(
    message: Annotated[str | None, typer.Option("--message", "-m", help="Send one message, print the reply.")] = None,
    session: Annotated[str, typer.Option("--session", "-s", help="Session key.")] = "cli:direct",
    markdown: Annotated[bool, typer.Option("--markdown/--no-markdown", help="Render replies as Markdown.")] = True,
    logs: Annotated[bool, typer.Option("--logs/--no-logs", help="Show runtime logs.")] = False,
) -> None:
    """Talk to the agent in the terminal: one message with -m, or an interactive chat."""
    setup_logging("INFO" if logs else "WARNING", hold=True)
    config = _load()
    setup_logging("INFO" if logs else "WARNING", config.logging)
    loop = _make_agent(config)
    channel, _, chat_id = session.partition(":")
    chat_id = chat_id or "direct"

    def show(reply: str) -> None:
        console.print(f"\n{__logo__} nanobot")
        console.print(Markdown(reply) if markdown else reply)
        console.print()

    async def one(text: str) -> None:
        show(await loop.process_direct(text, session_key=session, channel=channel or "cli", chat_id=chat_id))

    async def interactive() -> None:
        console.print(f"{__logo__} Interactive mode (type exit or press Ctrl+C to quit)\n")
        while True:
            try:
                text = await asyncio.to_thread(input, "You: ")
            except (EOFError, KeyboardInterrupt):
                break
            if text.strip().lower() in ("exit", "quit", "/exit", "/quit", ":q"):
                break
            if text.strip():
                await one(text)
        console.print("Goodbye!")

    async def run() -> None:
        try:
            await (one(message) if message is not None else interactive())
        finally:
            await loop.close()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        console.print("\nGoodbye!")


# ---------------------------------------------------------------------------- gateway
@app.command()
def gateway(
    port: Annotated[int | None, typer.Option("--port", "-p", help="API channel port (sets channels.api.port).")] = None,
    bus: Annotated[str | None, typer.Option("--bus", help="Bus backend, local or celery (sets bus.backend).")] = None,
    embedded_worker: Annotated[
        bool | None,
        typer.Option("--embedded-worker/--no-embedded-worker", help="Celery mode: also run a worker here."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Run channels, the agent, cron and heartbeat until SIGTERM or Ctrl+C."""
    from nanobot.bus.factory import BusUnavailableError
    from nanobot.gateway.service import Gateway, GatewayStartError
    from nanobot.providers.registry import NoProviderError

    setup_logging("DEBUG" if verbose else None, hold=True)
    config = _load()
    setup_logging("DEBUG" if verbose else None, config.logging)
    if port is not None:
        config.channels.api.port = port
    if bus is not None:
        if bus not in ("local", "celery"):
            raise fail(f"--bus must be local or celery, not {bus!r}", 2)
        config.bus.backend = bus  # type: ignore[assignment]
    if embedded_worker is not None:
        config.bus.run_embedded_worker = embedded_worker
    try:
        gw = Gateway(config)
    except (NoProviderError, BusUnavailableError) as exc:
        raise fail(str(exc)) from exc
    console.print(f"{__logo__} nanobot gateway (bus={config.bus.backend})")
    try:
        asyncio.run(gw.run_until_signal())
    except GatewayStartError as exc:
        raise fail(str(exc)) from exc


# ---------------------------------------------------------------------------- worker
@app.command()
def worker(
    autoscale: Annotated[str | None, typer.Option("--autoscale", help="MAX,MIN pool processes.")] = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency", "-c", help="Fixed pool size.")] = None,
    pool: Annotated[str | None, typer.Option("--pool", "-P", help="prefork, threads or solo.")] = None,
    queues: Annotated[str | None, typer.Option("--queues", "-Q", help="Comma-separated queues (default: all).")] = None,
    name: Annotated[str | None, typer.Option("--hostname", "-n", help="Worker name.")] = None,
    loglevel: Annotated[
        str | None, typer.Option("--loglevel", "-l", help="Default: $NANOBOT_LOG_LEVEL, else logging.level.")
    ] = None,
) -> None:
    """Run a Celery worker for distributed mode (the same as `celery -A nanobot_celery worker ...`)."""
    from nanobot.bus.factory import BusUnavailableError, distributed

    config = _load()
    try:
        argv = distributed("worker").worker_argv(
            config, pool=pool, autoscale=autoscale, concurrency=concurrency, queues=queues, name=name,
            loglevel=loglevel,
        )
    except BusUnavailableError as exc:
        raise fail(str(exc)) from exc
    require_redis(config)
    if chosen_format(config.logging) == "text":  # JSON logs: one object per line, nothing else on stderr
        err.print(" ".join(argv[2:]))
    os.execv(argv[0], argv)


# ---------------------------------------------------------------------------- sessions
def _stores(config: Config) -> tuple[Any, Any]:
    from nanobot.session.factory import create_session_store

    require_redis(config)
    return create_session_store(config, "file"), create_session_store(config, "redis")


@sessions_app.command("list")
def sessions_list(
    backend: Annotated[str | None, typer.Option("--backend", help="file or redis (default: sessions.backend).")] = None,
) -> None:
    """List stored conversations."""
    from nanobot.session.factory import create_session_store

    config = _load()
    chosen = backend or config.sessions.backend
    if chosen == "redis":
        require_redis(config)
    table = Table(title=f"Sessions ({chosen})")
    for col in ("key", "updated", "created"):
        table.add_column(col)
    for info in create_session_store(config, chosen).list_sessions():
        table.add_row(info["key"], str(info.get("updated_at") or "-"), str(info.get("created_at") or "-"))
    console.print(table)


@sessions_app.command("export")
def sessions_export() -> None:
    """Copy histories from Redis to the workspace's session files (before switching sessions to file)."""
    from nanobot.session.factory import copy_sessions

    files, redis_store = _stores(_load())
    report = copy_sessions(redis_store, files)
    console.print(f"exported {len(report.copied)} session(s) to {files.sessions_dir}; "
                  f"{len(report.skipped)} already up to date")


@sessions_app.command("import")
def sessions_import() -> None:
    """Copy the workspace's session files into Redis (before switching sessions to redis)."""
    from nanobot.session.factory import copy_sessions

    files, redis_store = _stores(_load())
    report = copy_sessions(files, redis_store)
    console.print(f"imported {len(report.copied)} session(s) into Redis; {len(report.skipped)} already up to date")


# ---------------------------------------------------------------------------- status
@app.command()
def status() -> None:
    """Show the config, workspace, model and provider in use."""
    from nanobot.providers.registry import NoProviderError, select_provider

    path = config_path()
    config = _load()
    d = config.agents.defaults
    console.print(f"{__logo__} nanobot {__version__}")
    found = "[green]✓[/green]" if path.exists() else "[yellow](missing: defaults)[/yellow]"
    console.print(f"config:    {path} {found}")
    ws = config.workspace_path
    console.print(f"workspace: {ws} {'[green]✓[/green]' if ws.exists() else '[yellow](missing)[/yellow]'}")
    console.print(f"model:     {d.model}")
    try:
        choice = select_provider(config)
        console.print(f"provider:  {choice.spec.name} ({choice.api_base}) model sent as {choice.model!r}")
    except NoProviderError as exc:
        console.print(f"provider:  [yellow]{exc}[/yellow]")
    console.print(f"bus:       {config.bus.backend}   sessions: {config.sessions.backend}")
    if config.bus.backend == "celery" or config.sessions.backend == "redis":
        console.print(f"redis:     {_redis_location(config.bus.redis_url)}", markup=False, highlight=False)


def _redis_location(url: str) -> str:
    """Where bus.redisUrl points, never its credentials nor its query: `scheme://host:port/db`."""
    from urllib.parse import urlsplit

    invalid = "(not a valid Redis URL; URL-encode special characters in its password)"
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return invalid
    if not parts.scheme or "@" in parts.path + parts.query + parts.fragment:
        return invalid  # a password with an unencoded / ? or #: the URL splits inside it
    host = parts.hostname or ""
    return f"{parts.scheme}://{f'[{host}]' if ':' in host else host}{port}{parts.path}"


# ---------------------------------------------------------------------------- channels
@channels_app.command("status")
def channels_status() -> None:
    """Which channels are enabled, how they are set up, and whether a running gateway serves them."""
    config = _load()
    running = _gateway_channels(config)
    table = Table(title="Channels")
    for column in ("channel", "enabled", "state", "details"):
        table.add_column(column)
    c = config.channels
    auth = "on" if c.api.api_key else "off"
    tg = c.telegram
    wa = c.whatsapp
    details = {
        "api": f"http://{c.api.host}:{c.api.port}/v1 auth={auth}",
        "telegram": (f"{tg.mode}" + (f" {tg.webhook_url or '(no webhookUrl)'}" if tg.mode == "webhook" else "")
                     + (" token set" if tg.token else " no token")),
        "whatsapp": (f"cloud: phone number {wa.cloud.phone_number_id}, webhook /whatsapp on the gateway port"
                     if wa.cloud.configured else f"bridge: {wa.bridge_url}"),
    }
    for name, detail in details.items():
        enabled = getattr(c, name).enabled
        if running is None:
            state = "[dim]gateway not running[/dim]"
        elif name in running:
            state = "[green]running[/green]" if running[name].get("running") else "[red]stopped[/red]"
        else:
            state = "[dim]-[/dim]"
        table.add_row(name, _yes(enabled), state if enabled else "[dim]-[/dim]", detail)
    console.print(table)


def _gateway_channels(config: Any) -> dict[str, dict[str, bool]] | None:
    """The channels a gateway on this host reports at gateway.host:port/health; None when none answers."""
    import httpx

    host = "127.0.0.1" if config.gateway.host in ("0.0.0.0", "::", "") else config.gateway.host
    try:
        reply = httpx.get(f"http://{host}:{config.gateway.port}/health", timeout=1.0, trust_env=False)
        channels = reply.json().get("channels")
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    return channels if isinstance(channels, dict) else None


@channels_app.command("login")
def channels_login(channel: Annotated[str, typer.Argument(help="The channel to connect: whatsapp.")]) -> None:
    """Explain how to connect a channel's account (WhatsApp: the Cloud API or upstream's bridge)."""
    if channel != "whatsapp":
        console.print(f"[red]nothing to log in for {channel!r}[/red]: only whatsapp needs it "
                      "(telegram uses channels.telegram.token from @BotFather)")
        raise typer.Exit(2)
    config = _load()
    wa = config.channels.whatsapp
    gw = config.gateway
    if wa.cloud.configured:
        console.print(
            "WhatsApp [bold]Cloud API[/bold] (channels.whatsapp.cloud is configured):\n"
            "  1. In your Meta app's WhatsApp settings, set the callback URL to the public HTTPS address that\n"
            f"     your reverse proxy forwards to this gateway: http://{gw.host}:{gw.port}/whatsapp\n"
            "  2. Use channels.whatsapp.cloud.verifyToken as the verify token, and subscribe to 'messages'.\n"
            "  3. appSecret (App settings > Basic) signs every delivery; nanobot refuses unsigned ones.\n"
            f"  phone number id: {wa.cloud.phone_number_id}   verify token set: {bool(wa.cloud.verify_token)}"
            f"   app secret set: {bool(wa.cloud.app_secret)}\n"
            "No QR code is involved: the number is linked in Meta's WhatsApp Manager."
        )
        return
    console.print(
        "WhatsApp through upstream nanobot's [bold]bridge[/bold] (channels.whatsapp.bridgeUrl):\n"
        "  1. Run the bridge from upstream nanobot (its bridge/ folder: npm install && npm run build && npm start),\n"
        "     with BRIDGE_TOKEN set to channels.whatsapp.bridgeToken.\n"
        "  2. It prints a QR code: scan it in WhatsApp > Linked devices. The session is kept by the bridge.\n"
        f"  3. Start `nanobot gateway`; it connects to {wa.bridge_url} and reconnects by itself.\n"
        "To use the official WhatsApp Cloud API instead, fill channels.whatsapp.cloud "
        "(phoneNumberId, accessToken, appSecret, verifyToken) and run this command again."
    )


def _yes(flag: bool) -> str:
    return "[green]yes[/green]" if flag else "[dim]no[/dim]"


# ---------------------------------------------------------------------------- cron
def _cron() -> Any:
    from nanobot.cron.service import CronService

    return CronService(cron_store_path())


def _fmt_ms(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S") if ms else "-"


@cron_app.command("list")
def cron_list(all_jobs: Annotated[bool, typer.Option("--all", "-a", help="Include disabled jobs.")] = False) -> None:
    """List scheduled jobs."""
    jobs = _cron().list_jobs(include_disabled=all_jobs)
    if not jobs:
        console.print("No scheduled jobs.")
        return
    table = Table(title="Scheduled jobs")
    for col in ("id", "name", "schedule", "enabled", "next run", "last", "owner"):
        table.add_column(col, overflow="fold")
    for job in jobs:
        s = job.schedule
        when = {"every": f"every {(s.every_ms or 0) // 1000}s", "cron": f"{s.expr} {s.tz or ''}".strip(),
                "at": _fmt_ms(s.at_ms)}[s.kind]
        table.add_row(job.id, job.name, when, _yes(job.enabled), _fmt_ms(job.state.next_run_at_ms),
                      job.state.last_status or "-", job.owner or "(operator)")
    console.print(table)


@cron_app.command("add")
def cron_add(
    name: Annotated[str, typer.Option("--name", "-n", help="Job name.")],
    message: Annotated[str, typer.Option("--message", "-m", help="What the agent is asked when the job fires.")],
    every: Annotated[int | None, typer.Option("--every", "-e", help="Run every N seconds.")] = None,
    cron_expr: Annotated[str | None, typer.Option("--cron", help="Cron expression, e.g. '0 9 * * *'.")] = None,
    tz: Annotated[str | None, typer.Option("--tz", help="IANA timezone for --cron.")] = None,
    at: Annotated[str | None, typer.Option("--at", help="Run once at an ISO date-time.")] = None,
    deliver: Annotated[bool, typer.Option("--deliver", "-d", help="Send the reply to --channel/--to.")] = False,
    channel: Annotated[str | None, typer.Option("--channel", help="Channel to deliver to.")] = None,
    to: Annotated[str | None, typer.Option("--to", help="Chat id to deliver to.")] = None,
) -> None:
    """Add a scheduled job (exactly one of --every, --cron, --at)."""
    from nanobot.agent.tools.cron import schedule_from_args

    try:
        schedule = schedule_from_args({"every_seconds": every, "cron_expr": cron_expr, "tz": tz, "at": at})
        if deliver and not (channel and to):
            raise ValueError("--deliver needs --channel and --to")
        job = _cron().add_job(
            name=name, schedule=schedule, message=message, deliver=deliver, channel=channel, to=to,
            delete_after_run=schedule.kind == "at",
        )
    except ValueError as exc:
        raise fail(str(exc), 2) from exc
    console.print(f"[green]✓[/green] Added job {job.name!r} ({job.id})")


@cron_app.command("remove")
def cron_remove(job_id: Annotated[str, typer.Argument(help="Job id.")]) -> None:
    """Remove a job."""
    if not _cron().remove_job(job_id):
        raise fail(f"no job {job_id}")
    console.print(f"[green]✓[/green] Removed job {job_id}")


@cron_app.command("enable")
def cron_enable(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    disable: Annotated[bool, typer.Option("--disable", help="Disable instead of enable.")] = False,
) -> None:
    """Enable (or --disable) a job."""
    job = _cron().enable_job(job_id, enabled=not disable)
    if job is None:
        raise fail(f"no job {job_id}")
    console.print(f"[green]✓[/green] Job {job_id} {'disabled' if disable else 'enabled'}")


@cron_app.command("run")
def cron_run(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    force: Annotated[bool, typer.Option("--force", "-f", help="Run even if disabled.")] = False,
) -> None:
    """Run a job now, in this process, and print the reply."""
    from nanobot.gateway.service import cron_job_runner

    setup_logging("WARNING", hold=True)
    config = _load()
    setup_logging("WARNING", config.logging)
    service = _cron()
    agent_loop = _make_agent(config)
    replies: list[str | None] = []
    runner = cron_job_runner(agent_loop, agent_loop.bus)

    async def run_and_keep(job: Any) -> str | None:
        reply = await runner(job)
        replies.append(reply)
        return reply

    service.on_job = run_and_keep

    async def run() -> bool:
        try:
            return await service.run_job(job_id, force=force)
        finally:
            await agent_loop.close()

    if not asyncio.run(run()):
        raise fail(f"no job {job_id} (or it is disabled: use --force)")
    console.print(f"[green]✓[/green] Job {job_id} ran")
    if replies and replies[0]:
        console.print(replies[0])
