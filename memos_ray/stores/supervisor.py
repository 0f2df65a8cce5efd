"""Keeping an embedded server process alive inside the actor that owns it."""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

logger = logging.getLogger(__name__)


class ManagedServer(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...

    def is_running(self) -> bool: ...


class Supervisor:
    """Starts the server on its own thread, polls it, and restarts it when it dies.

    The server's parent-death signal is tied to the thread that started it, so this thread,
    which lives as long as its owner, starts it the first time and after every crash.
    Construction returns once the first start is done, raising what it raised.
    """

    def __init__(self, server: ManagedServer, what: str, poll_s: float = 0.5) -> None:
        self.server = server
        self.what = what
        self.lock = threading.Lock()
        self.stopping = False
        self.restarts = 0
        self._poll_s = poll_s
        started = threading.Event()
        failure: list[BaseException] = []
        threading.Thread(
            target=self._run, args=(started, failure), name=f"{what}-supervisor", daemon=True
        ).start()
        started.wait()
        if failure:
            raise failure[0]

    def _run(self, started: threading.Event, failure: list[BaseException]) -> None:
        try:
            self.server.start()
        except BaseException as exc:
            failure.append(exc)
            started.set()
            return
        started.set()
        while True:
            time.sleep(self._poll_s)
            with self.lock:
                if self.stopping:
                    return
                if self.server.is_running():
                    continue
                logger.error("%s server exited unexpectedly; restarting it", self.what)
                try:
                    self.server.start()
                    self.restarts += 1
                except Exception:
                    logger.exception("%s restart failed; trying again", self.what)

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            self.server.stop()
