"""What a stage prints while it runs: progress with the time left, what it waits for before the first step,
and no library chatter (transformers' own bars, deprecation warnings from inside libraries)."""

from __future__ import annotations

import io
import re
import warnings

import pytest


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def plain_console():
    from rich.console import Console

    buffer = io.StringIO()
    return buffer, Console(file=buffer, width=100_000, soft_wrap=True, highlight=False)


def test_plain_progress_says_what_it_waits_for_then_the_time_left():
    from vlmppo.commands._common import PlainProgress

    buffer, console = plain_console()
    clock = FakeClock()
    advance = PlainProgress("sft: optimizer steps", "building the tiny qwen2-vl model", console, clock)
    clock.now += 30  # building the model: not counted as training time
    advance(1, 100)
    clock.now += 9  # 9 more steps in 9 s: 90 left, about 90 s
    advance(10, 100, "loss 0.5")
    clock.now += 90
    advance(100, 100, "loss 0.1")
    lines = buffer.getvalue().splitlines()
    assert lines == [
        "sft: optimizer steps: building the tiny qwen2-vl model",
        "sft: optimizer steps: 1/100",
        "sft: optimizer steps: 10/100 · 0:01:30 left · loss 0.5",
        "sft: optimizer steps: 100/100 · loss 0.1",
    ]


def test_the_terminal_bar_shows_what_it_waits_for_before_the_first_step(monkeypatch):
    from rich.console import Console

    import vlmppo.console
    from vlmppo.commands._common import progress_bar

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=200, highlight=False)
    monkeypatch.setattr(vlmppo.console, "console", console)
    with progress_bar("sft", "building the tiny qwen2-vl model"):
        pass  # no step yet: the bar is drawn (on exit at the latest) with what it waits for
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buffer.getvalue())
    assert re.search(r"sft .*0/\? 0:00:00 elapsed building the tiny qwen2-vl model", shown), shown


def test_the_terminal_bar_shows_the_time_elapsed_and_left():
    from rich.progress import Progress

    from vlmppo.commands._common import time_column

    clock = FakeClock()
    column = time_column()
    progress = Progress(column, get_time=clock, auto_refresh=False, disable=True)
    task_id = progress.add_task("sft", total=None)
    task = progress.tasks[0]
    assert column.render(task).plain == "0:00:00 elapsed"  # no total yet: nothing to estimate
    for step in range(1, 6):  # a step every 2 s: the 5 steps left take 10 s
        clock.now += 2
        progress.update(task_id, total=10, completed=step)
    assert column.render(task).plain == "0:00:10 elapsed, 0:00:10 left"


def test_model_wait_says_a_tiny_model_is_built_on_first_use_only(tmp_path, monkeypatch):
    from vlmppo.commands._common import model_wait
    from vlmppo.config import load_config
    from vlmppo.models.tiny import MARKER, tiny_model_dir

    monkeypatch.setenv("VLMPPO_CACHE", str(tmp_path))
    cfg = load_config("probe-color-tiny")
    assert model_wait(cfg) == "building the tiny qwen2-vl model (first use only), then loading it"
    tiny_model_dir("qwen2-vl").mkdir(parents=True)
    (tiny_model_dir("qwen2-vl") / MARKER).write_text("{}")
    assert model_wait(cfg) == "loading tiny:qwen2-vl"
    real = load_config("numberline-qwen")
    assert model_wait(real) == f"loading {real.model.path}"


def emit(category, module: str) -> None:
    warnings.warn_explicit("x is deprecated", category, filename=f"{module}.py", lineno=1, module=module)


def test_library_deprecations_are_silenced_inside_the_scope_and_real_warnings_kept():
    from vlmppo.quiet import quiet_libraries

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_libraries():
            emit(FutureWarning, "transformers.modeling_utils")
            emit(DeprecationWarning, "peft.tuners.lora")
            emit(FutureWarning, "torch.utils.checkpoint")
            emit(UserWarning, "transformers.generation.utils")  # a real warning
            emit(FutureWarning, "vlmppo.models.loading")  # our own use of a deprecated API
        emit(FutureWarning, "transformers.modeling_utils")  # the scope is over
    shown = [(w.category, w.filename) for w in seen]
    assert shown == [
        (UserWarning, "transformers.generation.utils.py"),
        (FutureWarning, "vlmppo.models.loading.py"),
        (FutureWarning, "transformers.modeling_utils.py"),
    ]


def test_transformers_progress_bars_are_off_inside_the_scope_only():
    hf_logging = pytest.importorskip("transformers.utils.logging")
    from vlmppo.quiet import quiet_libraries

    hf_logging.enable_progress_bar()
    with quiet_libraries():
        assert not hf_logging.is_progress_bar_enabled()
    assert hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a user who turned them off keeps them off
    with quiet_libraries():
        pass
    assert not hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()
