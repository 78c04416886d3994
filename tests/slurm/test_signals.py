"""vlmppo.signals: SIGTERM/SIGUSR1 only set a flag, so the training loop can save and exit at a step boundary."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

from vlmppo.signals import install_stop_handlers, stop_handlers


def test_usr1_sets_the_stop_flag_and_names_the_signal():
    with stop_handlers() as stop:
        assert not stop.requested and stop.signal_name is None
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.requested and stop.signal_name == "SIGUSR1"


def test_sigterm_sets_the_flag_instead_of_ending_the_process():
    with stop_handlers() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signal_name == "SIGTERM"


def test_a_second_signal_keeps_the_first_signal_name():
    with stop_handlers() as stop:
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signal_name == "SIGUSR1"


def test_leaving_the_block_restores_the_earlier_handlers():
    seen = []

    def earlier(signum, frame):
        seen.append(signum)

    before = signal.signal(signal.SIGUSR1, earlier)
    term_before = signal.getsignal(signal.SIGTERM)
    try:
        with stop_handlers() as stop:
            assert signal.getsignal(signal.SIGUSR1) is not earlier
        assert signal.getsignal(signal.SIGUSR1) is earlier
        assert signal.getsignal(signal.SIGTERM) is term_before
        os.kill(os.getpid(), signal.SIGUSR1)
        assert seen == [signal.SIGUSR1] and not stop.requested
    finally:
        signal.signal(signal.SIGUSR1, before)


def test_restore_puts_back_handlers_after_install():
    before = signal.getsignal(signal.SIGTERM)
    stop = install_stop_handlers()
    stop.restore()
    assert signal.getsignal(signal.SIGTERM) is before


def test_handlers_are_refused_outside_the_main_thread():
    errors = []

    def install():
        try:
            install_stop_handlers()
        except RuntimeError as exc:
            errors.append(str(exc))

    thread = threading.Thread(target=install)
    thread.start()
    thread.join()
    assert errors and "main thread" in errors[0]


@pytest.mark.parametrize("signame", ["SIGUSR1", "SIGTERM"])
def test_a_loop_finishes_its_step_saves_and_exits_zero_on_the_signal(tmp_path, signame):
    """The pattern the training loops follow, in a child process: the signal ends the run cleanly, exit 0."""
    script = f"""
import os, signal, sys
from vlmppo.signals import stop_handlers
with stop_handlers() as stop:
    for step in range(1000):
        if step == 3:
            os.kill(os.getpid(), signal.{signame})
        if stop.requested:
            open(sys.argv[1], "w").write(f"saved at step {{step}} on {{stop.signal_name}}")
            sys.exit(0)
sys.exit(5)
"""
    marker = tmp_path / "checkpoint.txt"
    out = subprocess.run(
        [sys.executable, "-c", script, str(marker)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert marker.read_text() == f"saved at step 3 on {signame}"
