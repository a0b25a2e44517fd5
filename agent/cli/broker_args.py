"""``--broker mqtt://HOST:PORT``, shared by the commands that talk to a broker as a backend does.

``tbox command send``, ``tbox events watch`` and ``tbox demo`` take the broker as a URL; this
parses it the same way for all (the port defaults to 1883), with one error message a user can act
on.
"""

from __future__ import annotations

import urllib.parse

from agent.errors import UsageError

__all__ = ["parse_broker_url"]

DEFAULT_MQTT_PORT = 1883


def parse_broker_url(url: str) -> tuple[str, int]:
    """``(host, port)`` of ``mqtt://HOST[:PORT]``; :class:`UsageError` naming ``--broker``."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        raise UsageError(f"--broker {url!r}: expected mqtt://HOST:PORT") from None
    if parts.scheme != "mqtt" or not parts.hostname or parts.path not in ("", "/"):
        raise UsageError(f"--broker {url!r}: expected mqtt://HOST:PORT")
    try:
        return parts.hostname, parts.port or DEFAULT_MQTT_PORT
    except ValueError:
        raise UsageError(f"--broker {url!r}: the port is not a number from 1 to 65535") from None
