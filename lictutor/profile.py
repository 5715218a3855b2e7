"""What a codec costs: parameters, multiply–accumulates, peak memory and coding time, sender and
receiver apart.

Knowledge distillation (chapter 5) slims the *receiver*: a smaller decoder for the same
bitstream format. So every figure here is split by side, after the modules each side needs:

* **decoder** (the receiver): every module but the analysis transforms ``g_a`` and ``h_a``
  (:data:`SENDER_ONLY`): ``g_s``, ``h_s``, the entropy models and any context model
  (``context_prediction``, ``entropy_parameters``, ...), what ``decompress`` uses;
* **encoder** (the sender): every module but ``g_s`` (:data:`RECEIVER_ONLY`) -- the sender
  needs ``h_s`` and the context model too, to code ``y`` with the decoder's very
  probabilities.

Multiply–accumulates are counted by PyTorch's own FLOP counter
(:class:`torch.utils.flop_counter.FlopCounterMode`, MACs = FLOPs / 2) during the real
``compress`` and ``decompress`` calls: convolutions (GDN's included, it is a 1×1 convolution)
and matrix products, dense (a masked convolution counts its zeros); element-wise operations and
the entropy coder are not counted. PyTorch's counter does not know torchvision's deformable
convolution (the DRM of :class:`lictutor.models.FastLIC`): :func:`count_macs` adds it as the
convolution it computes, ``C_in/groups · k_h · k_w`` MACs per output element (the bilinear
sampling of its inputs, like every element-wise operation, is not counted). Peak memory is that of tensors allocated *during* the call,
above what was held before it (the weights do not count): on CUDA from
``torch.cuda.max_memory_allocated``, on the CPU from the allocation and release events of the
PyTorch profiler (``profile_memory=True``), summed in time order -- exact at the granularity of
operators (a temporary allocated and freed inside one operator is not seen).
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from lictutor.errors import LictutorError

__all__ = [
    "SENDER_ONLY",
    "RECEIVER_ONLY",
    "parameter_counts",
    "count_macs",
    "peak_memory",
    "median_time",
    "profile_model",
    "format_profile_table",
]

#: top-level modules only the sender runs; the receiver needs all the others
SENDER_ONLY = ("g_a", "h_a")
#: top-level modules only the receiver runs; the sender needs all the others
RECEIVER_ONLY = ("g_s",)


def parameter_counts(model: nn.Module) -> Dict[str, int]:
    """``{"total", "encoder", "decoder"}``: numbers of parameters of the model and of each side
    (see the module docstring)."""
    counts = {"total": 0, "encoder": 0, "decoder": 0}
    for name, p in model.named_parameters():
        top = name.split(".", 1)[0]
        counts["total"] += p.numel()
        if top not in RECEIVER_ONLY:
            counts["encoder"] += p.numel()
        if top not in SENDER_ONLY:
            counts["decoder"] += p.numel()
    return counts


def _deform_conv2d_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of ``torchvision::deform_conv2d``: 2 per multiply–accumulate of its convolution."""
    c_out, c_in_per_group, kh, kw = w_shape
    batch, _, height, width = out_shape
    return 2 * batch * c_out * height * width * c_in_per_group * kh * kw


def _custom_formulas() -> dict:
    import torchvision  # noqa: F401  (registers torch.ops.torchvision)

    return {torch.ops.torchvision.deform_conv2d: _deform_conv2d_flops}


def count_macs(fn: Callable, *args, **kwargs) -> int:
    """Multiply–accumulates of ``fn(*args, **kwargs)``: PyTorch's FLOP count (with torchvision's
    deformable convolution added), halved."""
    with FlopCounterMode(display=False, custom_mapping=_custom_formulas()) as counter:
        fn(*args, **kwargs)
    return counter.get_total_flops() // 2


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(fn: Callable, *args, device: torch.device | str = "cpu", **kwargs) -> int:
    """Peak bytes of the tensors ``fn(*args, **kwargs)`` allocates on ``device``, above those
    held before the call (see the module docstring for how)."""
    device = torch.device(device)
    if device.type == "cuda":
        _synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn(*args, **kwargs)
        _synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    if device.type != "cpu":
        raise LictutorError(f"peak memory is measured on cpu or cuda, not {device.type}")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(*args, **kwargs)
    held = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        held += event.self_cpu_memory_usage  # allocations (+) and releases (−) of this event alone
        peak = max(peak, held)
    return peak


def median_time(fn: Callable, repeat: int = 3, device: torch.device | str = "cpu") -> float:
    """Median wall time of ``repeat`` calls of ``fn()`` in seconds (waiting for ``device``'s
    queued work before and after each call)."""
    device = torch.device(device)
    times = []
    for _ in range(repeat):
        _synchronize(device)
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def profile_model(model: nn.Module, height: int, width: int, repeat: int = 3, name: Optional[str] = None) -> dict:
    """The costs of coding one random ``height × width`` image with ``model``, on the device
    its parameters are on.

    Puts the model in eval mode and builds its coding tables (``update()``), then runs
    ``compress`` and ``decompress`` once to warm up, once each under the FLOP counter and the
    memory measurement, and ``repeat`` timed times each (the median is kept). Returns a row for
    :func:`format_profile_table`: ``model``, ``size``, ``device``, ``params``,
    ``params_encoder``, ``params_decoder``, ``macs_encoder``, ``macs_decoder``,
    ``memory_encoder``, ``memory_decoder`` (bytes), ``encode_s``, ``decode_s`` (seconds).
    """
    factor = getattr(model, "downsampling_factor", 1)
    for side, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or value < 1 or value % factor:
            raise LictutorError(
                f"{side} must be a positive multiple of {factor} (the model's down-sampling), got {value!r}"
            )
    if not isinstance(repeat, int) or repeat < 1:
        raise LictutorError(f"repeat must be a positive integer, got {repeat!r}")
    device = next(model.parameters()).device
    model.eval()
    model.update()
    x = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0)).to(device)
    coded = model.compress(x)  # warm-up: also rebuilds stale tables
    model.decompress(coded["strings"], coded["shape"])

    def encode():
        return model.compress(x)

    def decode():
        return model.decompress(coded["strings"], coded["shape"])

    counts = parameter_counts(model)
    return {
        "model": name or type(model).__name__,
        "size": f"{height}x{width}",
        "device": str(device),
        "params": counts["total"],
        "params_encoder": counts["encoder"],
        "params_decoder": counts["decoder"],
        "macs_encoder": count_macs(encode),
        "macs_decoder": count_macs(decode),
        "memory_encoder": peak_memory(encode, device=device),
        "memory_decoder": peak_memory(decode, device=device),
        "encode_s": median_time(encode, repeat, device),
        "decode_s": median_time(decode, repeat, device),
    }


def _si(value: float) -> str:
    """3 significant digits with a k/M/G/T suffix: 271k, 5.07M."""
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:.3g}"


#: (header, row key, formatter) of every column of :func:`format_profile_table`
_COLUMNS = (
    ("model", "model", str),
    ("size", "size", str),
    ("params", "params", _si),
    ("enc params", "params_encoder", _si),
    ("dec params", "params_decoder", _si),
    ("enc MACs", "macs_encoder", _si),
    ("dec MACs", "macs_decoder", _si),
    ("enc MiB", "memory_encoder", lambda b: f"{b / 2**20:.1f}"),
    ("dec MiB", "memory_decoder", lambda b: f"{b / 2**20:.1f}"),
    ("encode ms", "encode_s", lambda s: f"{1e3 * s:.1f}"),
    ("decode ms", "decode_s", lambda s: f"{1e3 * s:.1f}"),
)


def format_profile_table(rows: Sequence[dict]) -> str:
    """One aligned text table of :func:`profile_model` rows (missing values: ``-``)."""
    if isinstance(rows, dict) or not all(isinstance(r, dict) for r in rows):
        raise LictutorError("rows must be a list of dicts, as returned by profile_model")
    cells: List[List[str]] = [[header for header, _, _ in _COLUMNS]]
    for row in rows:
        cells.append([fmt(row[key]) if row.get(key) is not None else "-" for _, key, fmt in _COLUMNS])
    widths = [max(len(line[i]) for line in cells) for i in range(len(_COLUMNS))]

    def line(values):  # names left-aligned, numbers right-aligned
        return "  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths)))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(c) for c in cells[1:])])
