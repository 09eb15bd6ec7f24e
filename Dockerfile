# nanobot image: the gateway, the Celery workers and Flower all run from it (see docker-compose.yml).
#
#   docker build -t nanobot .
#   docker run --rm -v nanobot-data:/data nanobot            # `nanobot gateway`, local mode
#   docker run --rm -v nanobot-data:/data nanobot nanobot status
#
# No secret is baked in: API keys come from the environment at run time (NANOBOT_* overrides, e.g.
# NANOBOT_PROVIDERS__OPENROUTER__API_KEY) or from /data/config.json on the volume.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# bubblewrap: the exec tool's sandbox (tools.exec.sandbox). It needs unprivileged user namespaces, which
# Docker's default seccomp profile refuses (clone/unshare with namespace flags, mount, pivot_root), and on
# AppArmor hosts the docker-default profile denies mount as well: docker-compose.yml's workers (sandbox "bwrap")
# then refuse every exec command; with sandbox "" exec runs unsandboxed, with a warning. Least privilege that lets
# it work, for the worker service only (Kubernetes: see deploy/kubernetes/worker.yaml):
#   security_opt: ["seccomp=<Docker's default profile, plus clone/unshare of namespaces, mount, umount2 and
#                  pivot_root for every process>", "apparmor=<docker-default plus userns and mount>"]
# (on Ubuntu 24.04 hosts, AppArmor-unconfined processes may not create user namespaces at all unless
# kernel.apparmor_restrict_unprivileged_userns=0, so a dedicated profile beats apparmor=unconfined).
# Not `privileged: true` nor `cap_add: [SYS_ADMIN]` (far more than bwrap needs), nor a setuid bwrap (it would
# need capabilities Docker drops, and bubblewrap 0.11.2 and later refuse to run setuid).
RUN apt-get update \
    && apt-get install -y --no-install-recommends bubblewrap \
    && rm -rf /var/lib/apt/lists/*

# An unprivileged user owns /data; the installed code stays root-owned and read-only to it.
RUN groupadd --system --gid 1000 nanobot \
    && useradd --system --uid 1000 --gid nanobot --create-home --home-dir /home/nanobot \
       --shell /usr/sbin/nologin nanobot

WORKDIR /app
# Everything pyproject.toml packages: the two packages, the `celeryconfig` module and the readme it names.
COPY pyproject.toml README.md celeryconfig.py ./
COPY nanobot/ ./nanobot/
COPY nanobot_celery/ ./nanobot_celery/
RUN pip install ".[celery]"

# Config, workspace, cron jobs (kept beside the config file) all live on the /data volume.
ENV NANOBOT_CONFIG=/data/config.json \
    NANOBOT_AGENTS__DEFAULTS__WORKSPACE=/data/workspace
RUN mkdir -p /data/workspace && chown -R nanobot:nanobot /data
VOLUME ["/data"]

USER nanobot

# 8900: the API channel (OpenAI-compatible HTTP; set NANOBOT_CHANNELS__API__HOST=0.0.0.0 to reach it).
# 5555: Flower (`celery -A nanobot_celery flower`).
# 18790: the gateway's /health, /ready, /metrics and webhooks (gateway.port; NANOBOT_GATEWAY__HOST=0.0.0.0).
# 9810: a worker's /health and /metrics (bus.worker.metricsPort; NANOBOT_BUS__WORKER__METRICS_HOST=0.0.0.0).
# Neither needs a key: keep them on the private network (docs/operations.md).
EXPOSE 8900 5555 18790 9810

CMD ["nanobot", "gateway"]
