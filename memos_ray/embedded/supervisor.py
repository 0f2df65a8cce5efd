"""Keeping an embedded server process alive inside the actor that owns it."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Literal, Protocol

from memos_ray import metrics

logger = logging.getLogger(__name__)

State = Literal["up", "restarting", "stopped"]


class ManagedServer(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...

    def is_running(self) -> bool: ...


@dataclass(frozen=True)
class SupervisorStatus:
    """What callers may ask: is the server up, how often has it been restarted, what's next."""

    state: State
    restarts: int
    failed_starts: int
    next_delay_s: float
    last_error: str | None

    @property
    def up(self) -> bool:
        return self.state == "up"


class Supervisor:
    """Starts the server on its own thread, polls it, and restarts it when it dies.

    Restarts back off exponentially (`min_delay_s` doubling up to `max_delay_s`) while the
    server keeps dying or failing to start, so a server that cannot come back is not
    respawned in a tight loop; the delay resets once it has stayed up for `stable_s`.
    While it is down, `status().up` is False and callers answer 503.

    The server's parent-death signal is tied to the thread that started it, so this thread,
    which lives as long as its owner, starts it the first time and after every crash.
    Construction returns once the first start is done, raising what it raised.
    """

    def __init__(
        self,
        server: ManagedServer,
        what: str,
        poll_s: float = 0.5,
        *,
        min_delay_s: float = 0.5,
        max_delay_s: float = 30.0,
        stable_s: float = 60.0,
    ) -> None:
        self.server = server
        self.what = what
        self.lock = threading.Lock()
        self.stopping = False
        self.restarts = 0
        self.failed_starts = 0
        self.min_delay_s = min_delay_s
        self.max_delay_s = max_delay_s
        self.stable_s = stable_s
        # Delays actually waited before the recent restart attempts (diagnostics, tests).
        self.recent_delays: deque[float] = deque(maxlen=32)
        self._poll_s = poll_s
        self._delay_s = min_delay_s
        self._state: State = "restarting"
        self._up_since = 0.0
        self._last_error: str | None = None
        self._wake = threading.Event()
        started = threading.Event()
        failure: list[BaseException] = []
        threading.Thread(
            target=self._run, args=(started, failure), name=f"{what}-supervisor", daemon=True
        ).start()
        started.wait()
        if failure:
            raise failure[0]

    def status(self) -> SupervisorStatus:
        """Lock-free: a restart holds the lock for as long as the server takes to start."""
        state = self._state
        if state == "up" and not self.server.is_running():
            state = "restarting"  # died since the last poll
        return SupervisorStatus(
            state, self.restarts, self.failed_starts, self._delay_s, self._last_error
        )

    def is_up(self) -> bool:
        return self.status().up

    def _run(self, started: threading.Event, failure: list[BaseException]) -> None:
        try:
            self.server.start()
        except BaseException as exc:
            failure.append(exc)
            started.set()
            return
        self._state, self._up_since = "up", time.monotonic()
        started.set()
        while not self._wake.wait(self._poll_s):
            with self.lock:
                if self.stopping:
                    return
                if self.server.is_running():
                    if time.monotonic() - self._up_since >= self.stable_s:
                        self._delay_s = self.min_delay_s
                    continue
                self._state = "restarting"
                delay = self._delay_s
                self._delay_s = min(self._delay_s * 2, self.max_delay_s)
            logger.error("%s server is down; restarting it in %.1f s", self.what, delay)
            if self._wake.wait(delay):
                return  # stop() was called
            self.recent_delays.append(delay)
            with self.lock:
                if self.stopping:
                    return
                try:
                    self.server.start()
                except Exception as exc:
                    self.failed_starts += 1
                    self._last_error = str(exc).splitlines()[0] if str(exc) else repr(exc)
                    logger.exception("%s restart failed; backing off", self.what)
                    continue
                self.restarts += 1
                metrics.store_restart(self.what, "server")
                self._state, self._up_since = "up", time.monotonic()

    def stop(self) -> None:
        self._wake.set()
        with self.lock:
            self.stopping = True
            self._state = "stopped"
            self.server.stop()
