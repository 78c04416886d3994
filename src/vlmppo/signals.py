"""Stop cleanly on SLURM's signals: save a checkpoint at the end of the current step, then exit 0.

SLURM sends SIGUSR1 before the time limit (``--signal=B:USR1@grace``, forwarded by the job script) and
SIGTERM on preemption or ``scancel``. A handler that raised or exited right away could tear a checkpoint or
an optimizer step in half, so the handlers here only set a flag that the training loop reads between steps::

    with stop_handlers() as stop:
        for update in range(start, updates):
            ...one update...
            if stop.requested:
                save_checkpoint(...)
                console.print(f"stopping on {stop.signal_name}: checkpoint saved; --resume auto continues")
                return

Under several processes every rank gets the signal, but maybe at different steps: agree on the flag first
(e.g. an all-reduce of max over ranks) so that all ranks stop after the same step.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


@dataclass
class StopRequest:
    """Set by the handlers: ``requested`` once a stop signal arrived; ``signal_name`` of the first one."""

    requested: bool = False
    signal_name: str | None = None
    _previous: dict = field(default_factory=dict, repr=False)

    def _handle(self, signum: int, frame) -> None:
        # Only a flag: the loop decides when it is safe to stop. A second signal changes nothing.
        if not self.requested:
            self.signal_name = signal.Signals(signum).name
        self.requested = True

    def restore(self) -> None:
        """Put back the handlers that were installed before ``install_stop_handlers``."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def install_stop_handlers(signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> StopRequest:
    """Install flag-setting handlers for SIGTERM and SIGUSR1 (or ``signals``); returns the flag holder.

    Must run in the main thread (Python delivers signals only there). Call ``restore()`` on the result,
    or use ``stop_handlers()``, to put the earlier handlers back.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(
            "install_stop_handlers() must be called from the main thread (signals go only there)."
        )
    request = StopRequest()
    for signum in signals:
        request._previous[signum] = signal.signal(signum, request._handle)
    return request


@contextmanager
def stop_handlers(signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> Iterator[StopRequest]:
    """``install_stop_handlers`` for the duration of a ``with`` block; the earlier handlers come back after."""
    request = install_stop_handlers(signals)
    try:
        yield request
    finally:
        request.restore()
