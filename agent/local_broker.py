"""A private Mosquitto broker on a free loopback port, for ``tbox demo`` and the tests.

The README's first command (``scripts/setup``) installs Debian's ``mosquitto`` package; this
starts a broker process with its own configuration in a work directory (the system service, if
any, is not used). :meth:`LocalBroker.kill` cuts the broker off like a power cut (SIGKILL) and
:meth:`LocalBroker.start` brings it back on the same port, for outages.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from agent.errors import TboxError

__all__ = ["BrokerError", "LocalBroker", "free_port", "mosquitto_binary"]

_CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto")


def mosquitto_binary() -> str | None:
    """The mosquitto executable, or None if it is not installed."""
    for name in _CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BrokerError(TboxError):
    """The local broker cannot be started."""


class LocalBroker:
    """A Mosquitto process with its own configuration in *workdir*, listening on 127.0.0.1.

    Anonymous clients are allowed: it listens on loopback only. Run as root, Mosquitto would
    switch to the ``mosquitto`` user and lose access to *workdir*, so it is told to stay root.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        extra_config: str = "",
        persistent: bool = False,
    ) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise BrokerError(
                "mosquitto is not installed: run ./scripts/setup (or apt install mosquitto), "
                "or give the address of a running broker"
            )
        self.binary = binary
        self.port = port or free_port()
        self.workdir = workdir
        self.config = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            + (
                f"persistence true\npersistence_location {workdir}/\n"
                if persistent
                else "persistence false\n"
            )
            + f"log_dest file {self.log}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            + ("user root\n" if os.geteuid() == 0 and "user " not in extra_config else "")
            + extra_config
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:PORT``."""
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, within: float = 10.0) -> None:
        """Start the broker and wait until it accepts connections."""
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + within
        while True:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise BrokerError(f"mosquitto exited at start: {err or self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise BrokerError(f"mosquitto did not listen on {self.port}") from None
                time.sleep(0.02)

    def stop(self, within: float = 10.0) -> None:
        """Stop the broker cleanly (SIGTERM): a persistent one saves its sessions and the
        messages queued for them first, and has them again after :meth:`start`."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(within)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.process is not None and self.process.stderr:
            self.process.stderr.close()

    def kill(self) -> None:
        """Stop the broker at once (SIGKILL), as a crash or power cut would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        if self.process is not None and self.process.stderr:
            self.process.stderr.close()

    def __enter__(self) -> LocalBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()
