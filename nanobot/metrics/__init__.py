"""Prometheus metrics of nanobot (prometheus-client). `instruments` holds every metric the core records;
`exposition` serves a registry on aiohttp. Distributed mode's own metrics live in nanobot_celery/metrics.py.

Label values are bounded: channel, provider, model and tool names come from the config and the registered
tools, outcomes from fixed lists; never a session key, chat id or user id.
"""
