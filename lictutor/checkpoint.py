"""Checkpoints: a trained model's weights with the configuration that made it, written so that
a crash never leaves half a file, and read so that nothing in them is trusted unchecked.

A checkpoint is a dict of tensors and plain Python values: ``format``, ``model`` (a name in
:data:`lictutor.models.MODELS`), ``model_args``, ``config`` (the training configuration,
:meth:`lictutor.config.TrainConfig.to_dict`), ``key`` (the run's cache key), ``state_dict``,
what the trainer adds (``step``, ``history``, ``train_time``; optimizer states in an
unfinished run's), and ``digest``, a SHA-256 of all the rest (:func:`content_digest`).

Reading one (:func:`read_checkpoint`, :func:`load_checkpoint`) checks, and refuses with one
line: the format; code or objects other than tensors and plain values (``weights_only=True``,
so nothing in the file runs); the digest (a flipped byte anywhere, a truncated file); the run
key, where the caller knows which run it wants; model arguments within
:data:`lictutor.models.MAX_CHANNELS`; weights that fit the model exactly and are finite.
:func:`load_cached` does the same for the trainer's cache, where a bad entry is moved aside
and trained again instead of stopping the run.

The digests of :func:`weights_digest` and :func:`teacher_digest` make a run's cache key depend
on the *content* of its warm-start weights and of its teacher, not on where they came from;
:func:`cache_path` is where the trainer caches a finished run.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import warnings
from pathlib import Path
from typing import Mapping, Union

import torch
import torch.nn as nn
from torch import Tensor

from lictutor import models
from lictutor.errors import LictutorError, LictutorWarning
from lictutor.paths import lictutor_home, write_atomic

__all__ = [
    "CHECKPOINT_FORMAT", "InitWeights", "Teacher", "save_checkpoint", "read_checkpoint", "load_checkpoint",
    "load_cached", "check_out", "load_finished", "load_weights", "state_dict_of", "content_digest", "weights_digest", "teacher_model",
    "teacher_digest", "cache_path",
]

CHECKPOINT_FORMAT = "lictutor-checkpoint-2"
#: formats lictutor once wrote: recognised, and refused because they carry no digest
_OLDER_FORMATS = ("lictutor-checkpoint-1",)

#: warm-start weights: a checkpoint written by :func:`lictutor.train.train`, or a state dict
InitWeights = Union[str, os.PathLike, Mapping[str, Tensor]]
#: a distillation teacher: a model, or a checkpoint written by :func:`lictutor.train.train`
Teacher = Union[nn.Module, str, os.PathLike]


def save_checkpoint(path, model: nn.Module, config, **extra) -> None:
    """Write ``model``'s weights, ``config`` (a :class:`lictutor.config.TrainConfig`) and
    ``extra`` values to ``path``, with the run's ``key`` (default ``config.key()``) and the
    :func:`content_digest` of it all.

    Atomic (:func:`lictutor.paths.write_atomic`): a crash mid-write never leaves a half
    checkpoint.
    """
    state = {
        "format": CHECKPOINT_FORMAT,
        "model": config.model,
        "model_args": dict(config.model_args),
        "config": config.to_dict(),
        "key": extra.pop("key", None) or config.key(),
        "state_dict": model.state_dict(),
        **extra,
    }
    state["digest"] = content_digest(state)
    write_atomic(path, lambda tmp: torch.save(state, tmp))


def content_digest(value) -> str:
    """SHA-256 (hex) of a checkpoint's content: tensors by dtype, shape and bytes, dicts by
    sorted keys, sequences item by item, other values by ``repr``."""
    h = hashlib.sha256()

    def feed(v):
        if isinstance(v, Tensor):
            h.update(f"T{v.dtype}{tuple(v.shape)};".encode())
            h.update(_tensor_bytes(v))
        elif isinstance(v, Mapping):
            h.update(f"D{len(v)};".encode())
            for k in sorted(v, key=repr):
                h.update(f"{k!r}:".encode())
                feed(v[k])
        elif isinstance(v, (list, tuple)):
            h.update(f"L{len(v)};".encode())
            for item in v:
                feed(item)
        else:
            h.update(f"V{v!r};".encode())

    feed({k: v for k, v in value.items() if k != "digest"})
    return h.hexdigest()


def read_checkpoint(path, key: str | None = None) -> dict:
    """The dict stored by :func:`save_checkpoint`, read with ``weights_only=True`` and checked
    (format, digest, layout; the run ``key`` when given). Raises :class:`LictutorError`."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise LictutorError(f"no checkpoint at '{path}'") from None
    except IsADirectoryError:
        raise LictutorError(f"'{path}' is a folder, not a checkpoint") from None
    except pickle.UnpicklingError as err:
        if "GLOBAL" not in str(err):  # anything but a refused object (a class, a function): garbage
            raise LictutorError(f"cannot read checkpoint '{path}': not a PyTorch file") from None
        raise LictutorError(f"refused checkpoint '{path}': it holds objects other than tensors and plain "
                            "values (read with weights_only=True; nothing in it was run)") from None
    except Exception:  # truncated, empty, or not a torch file at all
        raise LictutorError(f"cannot read checkpoint '{path}': not a complete PyTorch file") from None
    if isinstance(ckpt, dict) and ckpt.get("format") in _OLDER_FORMATS:
        raise LictutorError(f"'{path}' was written by an older lictutor, without a checksum; train it again")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise LictutorError(f"'{path}' is not a lictutor checkpoint")
    if ckpt.get("digest") != content_digest(ckpt):
        raise LictutorError(f"checkpoint '{path}' is damaged: its content does not match its SHA-256")
    problem = _layout_problem(ckpt)
    if problem:
        raise LictutorError(f"'{path}' is not a checkpoint lictutor wrote: {problem}")
    if key is not None and ckpt["key"] != key:
        raise LictutorError(f"'{path}' holds a checkpoint of another run (key {ckpt['key']}, not {key})")
    return ckpt


def _layout_problem(ckpt: dict) -> str | None:
    """What, if anything, is missing from or wrong in a checkpoint's layout."""
    kinds = {"model": str, "model_args": dict, "config": dict, "key": str, "state_dict": dict}
    for name, kind in kinds.items():
        if not isinstance(ckpt.get(name), kind):
            return f"its {name!r} is missing or not a {kind.__name__}"
    if not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in ckpt["state_dict"].items()):
        return "its 'state_dict' holds something other than named tensors"
    return None


def load_weights(model: nn.Module, state_dict: Mapping[str, Tensor], source: str, partial: bool = False) -> None:
    """Load ``state_dict`` into ``model``. ``partial``: some of the model's tensors may be
    missing (they keep their initialization), but every given tensor must fit one. A mismatch
    raises :class:`LictutorError` listing it on one line."""
    if not isinstance(state_dict, Mapping):
        raise LictutorError(f"{source} holds no weights")
    own = model.state_dict()
    problems = {"missing": [] if partial else [k for k in own if k not in state_dict],
                "unexpected": [k for k in state_dict if k not in own]}
    try:
        if not any(problems.values()):
            model.load_state_dict(state_dict, strict=not partial)
    except (RuntimeError, KeyError, TypeError) as err:  # e.g. "size mismatch for g_a.0.weight: ..."
        problems["wrong"] = [line.strip() for line in str(err).splitlines()[1:] if line.strip()] or [str(err)]
    detail = "; ".join(f"{len(keys)} {kind} ({', '.join(keys[:3])}{', …' if len(keys) > 3 else ''})"
                       for kind, keys in problems.items() if keys)
    if detail:
        raise LictutorError(f"the weights of {source} do not fit {type(model).__name__}: {detail}")


def load_checkpoint(path, map_location="cpu", key: str | None = None) -> tuple[nn.Module, dict]:
    """Load a checkpoint written by :func:`lictutor.train.train`: returns ``(model,
    checkpoint dict)``, the model in evaluation mode.

    Checked as the module docstring says (``key``: the run it must hold); anything else
    raises :class:`LictutorError`.
    """
    ckpt = read_checkpoint(path, key)
    try:
        model = models.create(ckpt["model"], **ckpt["model_args"])
    except LictutorError as err:
        raise LictutorError(f"checkpoint '{path}': {err}") from None
    load_weights(model, ckpt["state_dict"], f"checkpoint '{path}'")
    bad = next((n for n, t in ckpt["state_dict"].items() if t.is_floating_point() and not torch.isfinite(t).all()), None)
    if bad is not None:
        raise LictutorError(f"checkpoint '{path}' holds NaN or infinite weights (in {bad}); it cannot code images")
    return model.to(map_location).eval(), ckpt


def load_cached(path: Path, key: str, map_location="cpu") -> tuple[nn.Module, dict] | None:
    """The trainer's cache entry at ``path`` for the run ``key``, or ``None`` when there is none
    or it cannot be trusted (damaged, truncated, another run's): such an entry is renamed to
    ``<name>.bad``, never used, with a :class:`LictutorWarning`, and the run is trained again."""
    if not path.exists():
        return None
    try:
        return load_checkpoint(path, map_location=map_location, key=key)
    except LictutorError as err:
        bad = path.with_name(path.name + ".bad")
        os.replace(path, bad)
        reason = str(err).replace(f"checkpoint '{path}'", "it").replace(f"'{path}'", "it")
        warnings.warn(f"cache entry {path.name} not used ({reason}); "
                      f"moved to {bad.name}, training again", LictutorWarning, stacklevel=3)
        return None


def check_out(out: Path, key: str | None, force: bool) -> Path:
    """``out``, if writing the checkpoint of the run ``key`` there loses nothing: it does not
    exist, holds a checkpoint of this very run (any checkpoint when ``key`` is None: a recipe
    checks that before its first stage, whose weights the last stage's key depends on), or
    ``force``. The trainer checks it before any training."""
    if out.is_dir():
        raise LictutorError(f"--out '{out}' is a folder; name the checkpoint file to write")
    if out.exists() and not force:
        try:
            read_checkpoint(out, key)
        except LictutorError:
            raise LictutorError(f"'{out}' already exists and does not hold this run's checkpoint; "
                                "use --force (force=True) to replace it") from None
    return out


def load_finished(out: Path | None, key: str, steps: int, map_location="cpu") -> tuple[nn.Module, dict] | None:
    """``(model, checkpoint)`` of the run ``key``, finished (``steps`` done), at ``out``, or ``None``."""
    if out is None or not out.exists():
        return None
    try:
        if read_checkpoint(out, key)["step"] < steps:
            return None
    except LictutorError:  # another file, replaced with force=True
        return None
    return load_checkpoint(out, map_location=map_location, key=key)


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
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


def _tensor_bytes(t: Tensor) -> bytes:
    """The raw bytes of a tensor's values, in order."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


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
