"""``--broker mqtt://HOST:PORT``, shared by the commands that talk to a broker as a backend does.

``tbox command send`` and ``tbox events watch`` both take the broker as a URL; this parses it the
same way for both (the port defaults to 1883), with one error message a user can act on.
"""

from __future__ import annotations

import urllib.parse

from agent.errors import UsageError

__all__ = ["parse_broker_url"]

DEFAULT_MQTT_PORT = 1883


def parse_broker_url(url: str) -> tuple[str, int]:
    """``(host, port)`` of ``mqtt://HOST[:PORT]``; :class:`UsageError` naming ``--broker``."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "mqtt" or not parts.hostname:
        raise UsageError(f"--broker {url!r}: expected mqtt://HOST:PORT")
    try:
        return parts.hostname, parts.port or DEFAULT_MQTT_PORT
    except ValueError:
        raise UsageError(f"--broker {url!r}: the port is not a number from 1 to 65535") from None
