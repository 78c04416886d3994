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


DECODERS = ("generate", "static", "static-compiled")


def parse_decoders(text: str) -> list[str]:
    """``"generate,static"`` -> the decoders whose batched rows are measured (``model.decoder`` values)."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    bad = [n for n in names if n not in DECODERS]
    if bad or not names:
        raise ConfigError(
            f"--decoders '{text}': {', '.join(bad) or 'nothing given'} is not a decoder.",
            hint=f"Choose from {', '.join(DECODERS)}, comma-separated (e.g. --decoders generate,static).",
        )
    return list(dict.fromkeys(names))


def parse_answer_lengths(text: str) -> tuple[int, int] | None:
    """``forced`` -> None (every answer ``ppo.max_new_tokens`` long); ``"30-80"`` -> (30, 80): each answer
    ends with its end-of-turn token after a length drawn uniformly in that range (fixed seed)."""
    if text == "forced":
        return None
    low, _, high = text.partition("-")
    if not (low.isdigit() and high.isdigit() and 1 <= int(low) <= int(high)):
        raise ConfigError(
            f"--answer-lengths '{text}' is neither 'forced' nor a range like 30-80.",
            hint="Use --answer-lengths forced (every answer ppo.max_new_tokens long) or LOW-HIGH.",
        )
    return int(low), int(high)
