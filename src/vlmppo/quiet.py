"""Library chatter kept out of a stage's output, for as long as the stage runs and no longer.

transformers draws a tqdm bar for every model it loads or saves ("Loading weights", "Writing model
shards"): on a terminal they tear through our own progress bar, in a log they are noise. Libraries also
warn about deprecations inside their own code, which a user cannot act on. Both are silenced here in a
scope (a context manager), not for the process: a warning that our own code triggers (a deprecated
argument we pass is attributed to our module) and every other warning category still show.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

# Libraries whose deprecation warnings about their own internals are silenced.
LIBRARIES = ("transformers", "peft", "accelerate", "torch", "huggingface_hub", "tokenizers", "safetensors")


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """Within the block: no transformers/huggingface_hub progress bars and no FutureWarning or
    DeprecationWarning raised from inside the libraries in `LIBRARIES`. Everything is restored on exit.

    transformers is not imported here (it takes seconds): when it is imported inside the block, it
    copies huggingface_hub's setting (off) into its own bars.
    """
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    hub_bars_were_on = not are_progress_bars_disabled()
    hf_logging = sys.modules.get("transformers.utils.logging")
    bars_were_on = hf_logging.is_progress_bar_enabled() if hf_logging else hub_bars_were_on
    disable_progress_bars()
    if hf_logging is not None:
        hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            pattern = rf"({'|'.join(LIBRARIES)})(\.|$)"
            for category in (FutureWarning, DeprecationWarning):
                warnings.filterwarnings("ignore", category=category, module=pattern)
            yield
    finally:
        hf_logging = sys.modules.get("transformers.utils.logging")
        if hf_logging is not None and bars_were_on:
            hf_logging.enable_progress_bar()  # (turns huggingface_hub's on too: set again below)
        if hub_bars_were_on:
            enable_progress_bars()
        else:
            disable_progress_bars()
