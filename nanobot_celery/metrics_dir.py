"""Where a Celery worker's metrics files go: the step that must run before prometheus_client is first imported.

Imported first by `nanobot_celery/__init__.py`: when this process is a Celery worker (`celery -A nanobot_celery
worker`, which `nanobot worker` and the gateway's embedded worker run), it points PROMETHEUS_MULTIPROC_DIR at a
fresh private directory (or clears the operator's one) before nanobot's metrics are created, so every pool child
writes its own files and the main process's /metrics adds them up. Other processes (gateway, CLI, Flower,
`celery inspect`) keep the ordinary in-process registry.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "nanobot-metrics-"  # + the worker's pid + "-" + random: the directory we create
# The celery command's options that take a value (`celery -A app worker`): skipped when finding its subcommand.
_CELERY_VALUE_OPTIONS = frozenset({"-A", "--app", "-b", "--broker", "--result-backend", "--loader", "--config",
                                   "--workdir"})


def celery_subcommand(argv: list[str]) -> str | None:
    """`worker` for `celery -A nanobot_celery worker ...` (or `python -m celery ...`); None when `argv` is not
    the celery command."""
    if not argv:
        return None
    program = Path(argv[0])
    if program.name != "celery" and not (program.name == "__main__.py" and program.parent.name == "celery"):
        return None
    skip = False
    for arg in argv[1:]:
        if skip:
            skip = False
        elif arg in _CELERY_VALUE_OPTIONS:
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def use_multiprocess_dir(argv: list[str]) -> str | None:
    """In a Celery worker, set PROMETHEUS_MULTIPROC_DIR; returns the directory when we created it (to remove it
    at shutdown). The operator's directory is kept, its stale `*.db` files removed."""
    if celery_subcommand(argv) != "worker":
        return None
    given = os.environ.get(ENV)
    if given:
        directory = Path(given)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink(missing_ok=True)
        return None
    _remove_orphans(Path(tempfile.gettempdir()))
    created = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")
    os.environ[ENV] = created
    _switch_loaded_client()
    return created


def _remove_orphans(parent: Path) -> None:
    """Remove the directories of earlier workers that died without cleaning up (SIGKILL, OOM)."""
    for directory in parent.glob(f"{PREFIX}*-*"):
        pid = directory.name[len(PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(directory, ignore_errors=True)


def alive(pid: int) -> bool:
    """Whether a process with this pid exists (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _switch_loaded_client() -> None:
    """prometheus_client picks its value class when first imported, and the celery command may have imported it
    already (Flower's CLI plugin does, for its own metrics): metrics created from now on use the files."""
    values = sys.modules.get("prometheus_client.values")
    if values is not None:
        values.ValueClass = values.get_value_class()


CREATED_DIR = use_multiprocess_dir(sys.argv)
MAIN_PID = os.getpid()


def remove_created_dir() -> None:
    if CREATED_DIR is not None and os.getpid() == MAIN_PID:
        shutil.rmtree(CREATED_DIR, ignore_errors=True)


atexit.register(remove_created_dir)

