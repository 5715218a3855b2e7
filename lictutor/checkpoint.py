"""Checkpoints: a trained model's weights with the configuration that made it, written so that
a crash never leaves half a file and read with ``weights_only=True``, so that a checkpoint from
an untrusted source cannot run code.

A checkpoint is a dict of tensors and plain Python values: ``format``, ``model`` (a name in
:data:`lictutor.models.MODELS`), ``model_args``, ``config`` (the training configuration,
:meth:`lictutor.config.TrainConfig.to_dict`), ``state_dict``, and what the trainer adds (``key``,
``step``, ``history``, ``train_time``; optimizer states in an unfinished run's).

The digests here (:func:`weights_digest`, :func:`teacher_digest`) make a run's cache key
depend on the *content* of its warm-start weights and of its teacher, not on where they came
from; :func:`cache_path` is where the trainer caches a finished run.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Mapping, Union

import torch
import torch.nn as nn
from torch import Tensor

from lictutor import models
from lictutor.errors import LictutorError
from lictutor.paths import lictutor_home

__all__ = [
    "CHECKPOINT_FORMAT", "InitWeights", "Teacher", "save_checkpoint", "read_checkpoint", "load_checkpoint",
    "load_weights", "state_dict_of", "weights_digest", "teacher_model", "teacher_digest", "cache_path",
]

CHECKPOINT_FORMAT = "lictutor-checkpoint-1"

#: warm-start weights: a checkpoint written by :func:`lictutor.train.train`, or a state dict
InitWeights = Union[str, os.PathLike, Mapping[str, Tensor]]
#: a distillation teacher: a model, or a checkpoint written by :func:`lictutor.train.train`
Teacher = Union[nn.Module, str, os.PathLike]


def save_checkpoint(path, model: nn.Module, config, **extra) -> None:
    """Write ``model``'s weights, ``config`` (a :class:`lictutor.config.TrainConfig`) and
    ``extra`` values to ``path``.

    Atomic: a crash mid-write never leaves a half checkpoint.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": CHECKPOINT_FORMAT,
        "model": config.model,
        "model_args": dict(config.model_args),
        "config": config.to_dict(),
        "state_dict": model.state_dict(),
        **extra,
    }
    tmp = path.with_name(path.name + ".part")
    torch.save(state, tmp)
    os.replace(tmp, path)


def read_checkpoint(path) -> dict:
    """The dict stored by :func:`save_checkpoint`, read with ``weights_only=True``."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise LictutorError(f"no checkpoint at '{path}'") from None
    except Exception as err:  # truncated, not a torch file, or pickled code (refused)
        raise LictutorError(f"cannot read checkpoint '{path}': {err}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise LictutorError(f"'{path}' is not a lictutor checkpoint")
    return ckpt


def load_weights(model: nn.Module, state_dict: Mapping[str, Tensor], source: str, partial: bool = False) -> None:
    """Load ``state_dict`` into ``model``. ``partial``: some of the model's tensors may be
    missing (they keep their initialization), but every given tensor must fit one."""
    try:
        result = model.load_state_dict(state_dict, strict=not partial)
    except (RuntimeError, KeyError, TypeError) as err:
        raise LictutorError(f"the weights of {source} do not fit the model: {err}") from None
    if partial and result.unexpected_keys:
        raise LictutorError(f"the weights of {source} do not fit the model: unexpected "
                            f"{', '.join(result.unexpected_keys[:5])}")


def load_checkpoint(path, map_location="cpu") -> tuple[nn.Module, dict]:
    """Load a checkpoint written by :func:`lictutor.train.train`: returns ``(model,
    checkpoint dict)``, the model in evaluation mode.

    Loads with ``weights_only=True``: a checkpoint from an untrusted source cannot run code.
    Anything that is not a lictutor checkpoint gets a :class:`LictutorError`.
    """
    ckpt = read_checkpoint(path)
    try:
        model = models.create(ckpt["model"], **ckpt["model_args"])
    except (KeyError, TypeError):
        raise LictutorError(f"checkpoint '{path}' does not name its model") from None
    load_weights(model, ckpt.get("state_dict"), f"checkpoint '{path}'")
    return model.to(map_location).eval(), ckpt


def state_dict_of(init_from: InitWeights) -> Mapping[str, Tensor]:
    """The state dict of warm-start weights given as a checkpoint path or a state dict."""
    if isinstance(init_from, Mapping):
        return init_from
    return read_checkpoint(init_from)["state_dict"]


def weights_digest(state_dict: Mapping[str, Tensor]) -> str:
    """A hash of the names, shapes and values of ``state_dict``'s tensors."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name]
        if not isinstance(t, Tensor):
            raise LictutorError(f"init_from: {name!r} is a {type(t).__name__}, not a tensor")
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def teacher_model(teacher: Teacher) -> nn.Module:
    """The teacher as a model: itself, or loaded from a checkpoint."""
    if isinstance(teacher, nn.Module):
        return teacher
    if isinstance(teacher, (str, os.PathLike)):
        return load_checkpoint(teacher)[0]
    raise LictutorError(f"teacher must be a model or a checkpoint path, got {type(teacher).__name__}")


def teacher_digest(teacher: Teacher) -> str:
    """A hash of the teacher's class and of its parameters and masks (:func:`weights_digest`):
    what it computes in training. Its coding tables are left out: they change with
    ``update()``, not its outputs."""
    model = teacher_model(teacher)
    state = {**dict(model.named_parameters()),
             **{n: b for n, b in model.named_buffers() if n.endswith("mask")}}
    return f"{type(model).__qualname__}:{weights_digest(state)}"


def cache_path(config, init_from: InitWeights | None = None, teacher: Teacher | None = None) -> Path:
    """Where :func:`lictutor.train.train` caches the finished model of ``config`` (a
    :class:`lictutor.config.TrainConfig`; warm-started from ``init_from``, distilled from
    ``teacher``): ``$LICTUTOR_HOME/checkpoints/<model>-<key>.pt``."""
    return lictutor_home() / "checkpoints" / f"{config.model}-{config.key(init_from, teacher)}.pt"
