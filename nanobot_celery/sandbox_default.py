"""Distributed mode's default for the `exec` sandbox: bubblewrap wherever it works.

A worker runs turns for every user of the deployment, so `tools.exec.sandbox: ""` becomes "bwrap" when
bubblewrap works on this machine and "none" (with one warning per process tree) when it does not. An explicit
"bwrap" or "none" is kept; an explicit "bwrap" that cannot run makes the exec tool refuse every command.
"""

from __future__ import annotations

import logging

from nanobot.agent.tools.sandbox import bwrap_problem, choose_sandbox
from nanobot.config.schema import Config

log = logging.getLogger(__name__)

_warned = False


def apply_sandbox_default(config: Config) -> str:
    """Set `config.tools.exec.sandbox` to this mode's choice when it is ""; returns the sandbox in use."""
    global _warned
    exec_config = config.tools.exec
    if exec_config.sandbox == "":
        exec_config.sandbox = choose_sandbox("", prefer_bwrap=True)  # type: ignore[assignment]
        if exec_config.sandbox == "none" and not _warned:
            _warned = True
            log.warning(
                "exec runs without a sandbox: %s. Install bubblewrap and allow user namespaces (Docker: a seccomp "
                "profile that permits them), or set tools.exec.sandbox to 'none' to accept this",
                bwrap_problem(),
            )
    return exec_config.sandbox
