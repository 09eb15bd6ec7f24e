"""Redis URLs: shown without their secrets, and the TLS options of a `rediss://` URL for Celery."""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from kombu.utils.url import maybe_sanitize_url

# What stands for a URL that cannot be parsed (its parser's error text may quote part of the password).
UNPARSEABLE = "<unparseable Redis URL>"

_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def redact(url: str) -> str:
    """`url` as it may be shown: kombu masks the userinfo password (`:**@`) and drops the whole query
    string (`?password=`, `ssl_keyfile=`...). Added here, where kombu would show pieces of the password or
    raise an error quoting them, the URL is not shown at all: an `@` after the host (a password with an
    unencoded `/`, `?` or `#` splits the URL inside it), a bad port, userinfo without a scheme. Each URL of
    a `;`-separated list is masked."""
    return ";".join(_redact_one(one) for one in url.split(";"))


def _redact_one(url: str) -> str:
    try:
        parts = urlsplit(url)
        if "@" in parts.path + parts.query + parts.fragment or ("://" not in url and "@" in url):
            return UNPARSEABLE
        return str(maybe_sanitize_url(url))
    except ValueError:
        return UNPARSEABLE


def tls_options(url: str) -> dict[str, Any] | None:
    """For a `rediss://` URL, the `ssl_*` options of Celery's `broker_use_ssl`: the certificate is verified
    (`ssl.CERT_REQUIRED`) unless the URL's query says otherwise (`ssl_cert_reqs=none|optional|required`,
    `ssl_ca_certs=`, `ssl_certfile=`, `ssl_keyfile=`, `ssl_check_hostname=`). None for other URLs.

    Never raises (Celery's settings are computed on import): another `ssl_cert_reqs` is passed on as given,
    for redis-py to refuse when connecting, which the start-up check reports in one line."""
    if not url.startswith("rediss://"):
        return None
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    for key, value in parse_qsl(url.partition("?")[2].partition("#")[0]):
        if not key.startswith("ssl_"):
            continue
        if key == "ssl_cert_reqs":
            options[key] = _CERT_REQS.get(value, value)
        elif key == "ssl_check_hostname":
            options[key] = value.lower() not in ("false", "0", "no")
        else:
            options[key] = value
    return options
