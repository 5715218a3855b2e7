"""``EntropyModel``: what the entropy models share -- integer CDF tables, when to rebuild them,
and coding latents with them (:mod:`lictutor.entropy.coder`).

**When are the CDF tables rebuilt?** Forgetting ``update()`` after training is CompressAI's
most reported pitfall, so here ``compress`` and ``decompress`` rebuild the tables themselves
when they are *stale*:

* never built (``_offset`` is empty), or
* the parameters the tables are built from (:meth:`EntropyModel._density_params`: an entropy
  bottleneck's ``quantiles``, ``matrices``, ``biases``, ``factors``; a Gaussian's
  ``scale_table``) differ from those they were built from -- e.g. after an optimizer step.

Tables loaded from a checkpoint count as fresh for the parameters loaded with them, so a
published model decodes with exactly its published tables. ``update(force=False)`` itself
keeps CompressAI's meaning (do nothing if tables exist); ``update(force=True)`` always
rebuilds. :func:`update_stale_tables` rebuilds the stale tables of a whole model.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from lictutor.entropy import coder
from lictutor.errors import LictutorError
from lictutor.layers import LowerBound
from lictutor.quantization import dequantize, quantize

__all__ = ["EntropyModel", "update_stale_tables"]


class EntropyModel(nn.Module):
    """Base class: likelihood lower bound, CDF tables, coding with per-symbol indexes.

    A subclass defines the density (``forward`` returns ``(y_hat, likelihoods)``), the
    parameters its tables depend on (:meth:`_density_params`) and ``update(force)``, which
    fills three buffers (:meth:`_set_tables`):

    * ``_quantized_cdf`` (n_cdfs, max_len + 2) int32: one integer CDF per row;
    * ``_cdf_length`` (n_cdfs,): used length of each row (pmf length + 2);
    * ``_offset`` (n_cdfs,): the symbol coded by entry 0 of each row.

    Each element of the latent is coded with the row given by its ``index``.
    """

    #: buffers whose size is only known after ``update()``; resized when loading.
    _dynamic_buffers: Tuple[str, ...] = ("_quantized_cdf", "_offset", "_cdf_length")

    _offset: Tensor
    _quantized_cdf: Tensor
    _cdf_length: Tensor

    def __init__(self, likelihood_bound: float = 1e-9, entropy_coder_precision: int = 16):
        super().__init__()
        self.entropy_coder_precision = int(entropy_coder_precision)
        self.use_likelihood_bound = likelihood_bound > 0
        if self.use_likelihood_bound:
            self.likelihood_lower_bound = LowerBound(likelihood_bound)
        self.register_buffer("_offset", torch.IntTensor())
        self.register_buffer("_quantized_cdf", torch.IntTensor())
        self.register_buffer("_cdf_length", torch.IntTensor())
        # Staleness bookkeeping for the CDF tables (see the module docstring).
        self._tables_built_from: Optional[Tensor] = None
        self._tables_were_loaded = False
        self.register_load_state_dict_post_hook(_trust_loaded_tables)

    # -- tables -------------------------------------------------------------------

    def update(self, force: bool = False) -> bool:
        """Build the CDF tables; return True if they were (re)built."""
        raise NotImplementedError

    def _density_params(self) -> Tensor:
        """The parameters the CDF tables are built from, flattened (on the CPU); none here, so
        the tables of a subclass that does not say are stale only until first built."""
        return torch.empty(0)

    def tables_stale(self) -> bool:
        """True if the CDF tables must be (re)built before coding."""
        if self._offset.numel() == 0 or self._tables_built_from is None:
            return True
        current, built = self._density_params(), self._tables_built_from
        return current.shape != built.shape or not torch.equal(current, built)

    def _ensure_tables(self) -> None:
        if self.tables_stale():
            self.update(force=True)

    def _set_tables(self, cdf: Tensor, offset: Tensor, length: Tensor) -> None:
        """Install new CDF tables, built from the current :meth:`_density_params`."""
        self._quantized_cdf, self._offset, self._cdf_length = cdf, offset, length
        self._tables_built_from = self._density_params()

    def _pmf_to_cdf(
        self, pmf: Tensor, tail_mass: Tensor, pmf_length: Tensor, max_length: int
    ) -> Tensor:
        """One quantized CDF per row of ``pmf`` (its first ``pmf_length[i]`` entries
        plus the tail mass), zero-padded to ``max_length + 2``."""
        cdf = torch.zeros((len(pmf_length), max_length + 2), dtype=torch.int32)
        for i, p in enumerate(pmf):
            prob = torch.cat((p[: pmf_length[i]], tail_mass[i]), dim=0)
            row = coder.pmf_to_quantized_cdf(prob.tolist(), self.entropy_coder_precision)
            cdf[i, : row.size(0)] = row
        return cdf.to(pmf.device)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self._tables_were_loaded = state_dict.get(prefix + "_offset") is not None
        # Tables have a data-dependent size: give our buffers the incoming size first
        # (CompressAI does this in CompressionModel.load_state_dict, and only when ours
        # are empty; doing it here makes any container -- and re-loading -- work).
        for name in self._dynamic_buffers:
            incoming = state_dict.get(prefix + name)
            ours = getattr(self, name)
            if incoming is not None and ours is not None and incoming.shape != ours.shape:
                setattr(self, name, ours.new_empty(incoming.shape))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def tables_as_lists(self) -> coder.Tables:
        """The CDF tables as the lists the rANS coder takes (:data:`lictutor.entropy.coder.Tables`)."""
        return (
            self._quantized_cdf.tolist(),
            self._cdf_length.reshape(-1).int().tolist(),
            self._offset.reshape(-1).int().tolist(),
        )

    # -- coding -------------------------------------------------------------------

    def compress_with_indexes(self, x: Tensor, indexes: Tensor, medians: Optional[Tensor] = None) -> List[bytes]:
        """Round ``x`` around ``medians`` and rANS-code each batch item: one string each.

        ``indexes`` (same shape as ``x``) picks the CDF row of every element.
        """
        if x.dim() < 2:
            raise LictutorError(f"expected a batched (B, C, ...) tensor, got {tuple(x.shape)}")
        if x.shape != indexes.shape:
            raise LictutorError(
                "x and indexes must have the same shape, "
                f"got {tuple(x.shape)} and {tuple(indexes.shape)}"
            )
        coder.check_range(x if medians is None else x - medians)
        self._ensure_tables()
        symbols = quantize(x, "symbols", medians)
        tables = self.tables_as_lists()
        return [
            coder.encode(symbols[i].reshape(-1).tolist(), indexes[i].reshape(-1).int().tolist(), tables)
            for i in range(symbols.size(0))
        ]

    def decompress_with_indexes(self, strings: Sequence[bytes], indexes: Tensor, medians: Optional[Tensor] = None,
                                dtype: torch.dtype = torch.float) -> Tensor:
        """Inverse of :meth:`compress_with_indexes`: decoded symbols + ``medians``."""
        if not isinstance(strings, (list, tuple)) or not all(
            isinstance(s, (bytes, bytearray)) for s in strings
        ):
            raise LictutorError("strings must be a list of bytes, one per batch item")
        if len(strings) != indexes.size(0):
            raise LictutorError(
                f"got {len(strings)} strings for a batch of {indexes.size(0)} index maps"
            )
        self._ensure_tables()
        tables = self.tables_as_lists()
        symbols = torch.empty(indexes.shape, dtype=torch.int32)
        for i, s in enumerate(strings):
            values = coder.decode(bytes(s), indexes[i].reshape(-1).int().tolist(), tables, f"item {i} of the batch")
            symbols[i] = torch.tensor(values, dtype=torch.int32).reshape(symbols[i].shape)
        return dequantize(symbols.to(indexes.device), medians, dtype)


def _trust_loaded_tables(module: EntropyModel, incompatible_keys) -> None:
    # load_state_dict post-hook: runs after the module's children (an entropy bottleneck's
    # ParameterLists) are loaded, so the tables count as built from the loaded parameters.
    if module._tables_were_loaded:
        module._tables_built_from = module._density_params()
    module._tables_were_loaded = False


def update_stale_tables(model: nn.Module) -> bool:
    """Rebuild the CDF tables of every entropy model in ``model`` that are stale (see the
    module docstring); True if any was rebuilt."""
    stale = [m for m in model.modules() if isinstance(m, EntropyModel) and m.tables_stale()]
    for module in stale:
        module.update(force=True)
    return bool(stale)
