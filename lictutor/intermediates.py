"""What a codec computes on the way: ŷ, ẑ, the Gaussian parameters and the features of named
layers, recorded with forward hooks during its ordinary forward pass (:func:`record`,
:func:`codec_forward`).

Hooks, not a re-implementation of the forward pass: they work for every model in
:mod:`lictutor.models` (the context models included), for CompressAI's (same module names),
and under DistributedDataParallel. Knowledge distillation compares these records of a student
and a teacher (:func:`lictutor.losses.codec_distill_losses`); the chapters read them to look
inside a model.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, Iterator, Sequence

import torch.nn as nn
from torch import Tensor

from lictutor.errors import LictutorError

__all__ = ["record", "codec_forward"]


@contextmanager
def record(model: nn.Module, features: Sequence[str] = ()) -> Iterator[Dict[str, object]]:
    """Collect, during the forward passes run inside the block, a codec's intermediate values.

    Yields a dict filled with ``"y"`` (output of ``g_a``), ``"y_hat"`` (input of ``g_s``: what
    the decoder sees), ``"z_hat"`` (output of ``entropy_bottleneck``, for models that also have
    a ``gaussian_conditional``), ``"scales"``/``"means"`` (the Gaussian parameters the
    ``gaussian_conditional`` is called with, ``means`` None for a zero-mean model), and
    ``"features"``: the outputs of the modules named in ``features`` (names as in
    ``model.named_modules()``, e.g. ``"g_s.3"``).
    """
    modules = dict(model.named_modules())
    for name in ("g_a", "g_s", *features):
        if name not in modules or name == "":
            raise LictutorError(
                f"the model {type(model).__name__} has no module {name!r}; some it has: "
                f"{', '.join(list(n for n in modules if n)[:12])}, ..."
            )
    got: Dict[str, object] = {"features": {}}

    def gaussian(module, args, kwargs):
        got["scales"] = args[1] if len(args) > 1 else kwargs["scales"]
        got["means"] = args[2] if len(args) > 2 else kwargs.get("means")

    hooks = [
        modules["g_a"].register_forward_hook(lambda m, args, out: got.__setitem__("y", out)),
        modules["g_s"].register_forward_pre_hook(lambda m, args: got.__setitem__("y_hat", args[0])),
    ]
    if "gaussian_conditional" in modules:
        hooks.append(modules["gaussian_conditional"].register_forward_pre_hook(gaussian, with_kwargs=True))
        if "entropy_bottleneck" in modules:
            hooks.append(modules["entropy_bottleneck"].register_forward_hook(
                lambda m, args, out: got.__setitem__("z_hat", out[0])))
    for name in features:
        hooks.append(modules[name].register_forward_hook(
            lambda m, args, out, name=name: got["features"].__setitem__(name, out)))
    try:
        yield got
    finally:
        for hook in hooks:
            hook.remove()


def codec_forward(model: nn.Module, x: Tensor, features: Sequence[str] = ()) -> Dict[str, object]:
    """``model(x)`` (its ``x_hat`` and ``likelihoods``) together with what :func:`record`
    collects during that one pass."""
    with record(model, features) as got:
        out = model(x)
    return {**got, **out}
