"""Ctrl-C and SIGTERM during training: finish the step, save, return; a second Ctrl-C aborts at once."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

log = logging.getLogger(__name__)


class StopSignal:
    """SIGINT/SIGTERM set a flag (the loop stops after the current step); a second SIGINT aborts at once."""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested, self.signal_name = True, name
        log.warning("%s received: saving a checkpoint after this step (Ctrl-C again to abort without saving)", name)

    def __enter__(self) -> StopSignal:
        # signal handlers can only be installed from the main thread; elsewhere the flag simply never sets
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                signum = getattr(signal, name, None)
                if signum is not None:
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers ignore Ctrl-C / SIGTERM: the main process stops after its step and shuts them down."""
    for name in StopSignal.SIGNALS:
        signum = getattr(signal, name, None)
        if signum is not None:
            signal.signal(signum, signal.SIG_IGN)


__all__ = ["StopSignal", "ignore_stop_signals"]
