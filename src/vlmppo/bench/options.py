"""Command-line values of ``vlmppo bench``, checked before anything heavy is imported or loaded."""

from __future__ import annotations

from vlmppo.errors import ConfigError


def parse_n_envs(text: str) -> list[int]:
    """``"1,8,32"`` -> ``[1, 8, 32]``, sorted; the batch-1 baseline (1) is always included."""
    values = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise ConfigError(
                f"--n-envs '{text}': '{part}' is not a positive whole number of envs.",
                hint="Give a comma-separated list such as --n-envs 1,8,32 (1 is the batch-1 sequential "
                "baseline, which is always measured).",
            )
        values.append(int(part))
    return sorted({1, *values})


def check_repeats(repeats: int) -> int:
    if repeats < 1:
        raise ConfigError(f"--repeats {repeats}: need at least 1 timed repeat.", hint="E.g. --repeats 3.")
    return repeats


def check_shape_device(shape: str | None, device: str) -> None:
    """A registered shape (billions of random weights) runs on a GPU only; 'tiny' and None run anywhere."""
    if shape in (None, "tiny") or device == "cuda":
        return
    raise ConfigError(
        f"--shape {shape} builds a model with billions of random weights and needs a CUDA GPU; this run's "
        f"device is '{device}'.",
        hint="Run it on a GPU machine, or use --shape tiny on a CPU.",
    )
