"""What a chapter's models cost to train: the training time of every finished model that
:func:`lictutor.train.train` and :func:`lictutor.train.fit_entropy_model` returned in this
process, trained now or loaded from the cache, read from each checkpoint's record, so that a
chapter can print its cost from an empty cache beside its own wall time."""

from __future__ import annotations

import time
from typing import Dict

__all__ = ["record_training", "training_time", "run_summary"]

#: the training time (s) of every finished model returned in this process, by run key
_RETURNED: Dict[str, float] = {}


def record_training(key: str, seconds: float) -> None:
    """Count the finished run ``key`` (once, however often it is returned) as ``seconds`` of training."""
    _RETURNED[key] = seconds


def training_time() -> tuple[float, int]:
    """``(seconds, models)``: how long the finished models returned so far in this process
    took to train, each counted once and read from its checkpoint's record whether it was
    trained now or loaded from the cache -- what a chapter's models cost from an empty cache."""
    return sum(_RETURNED.values()), len(_RETURNED)


def run_summary(budget: str, started: float) -> str:
    """The line a chapter ends with: the name of its ``budget``, its wall time since
    ``started`` (a :func:`time.perf_counter` value), and :func:`training_time`, what its
    models took to train from an empty cache."""
    seconds, count = training_time()
    ran = f"budget {budget}: chapter ran in {time.perf_counter() - started:.0f} s"
    if count == 0:
        return f"{ran}; it trains no models"
    return f"{ran}; its {count} model{'s' * (count != 1)} took {seconds / 60:.1f} min to train from an empty cache"
