"""Entropy coding with CompressAI's rANS coder, checked so that bad data raises an error.

The rANS coder itself is not the lesson here, so we use CompressAI's (``compressai.ans``):
it codes integer symbols, each with the integer CDF table its *index* picks; values outside a
table are escape-coded 4 bits at a time. It trusts its input, though: the decoder reads past
the end of a short string (an empty one crashes the process) and never reports an error, and
the encoder loops forever on values near 2³¹. Every coding call in lictutor goes through this
module, which

* refuses symbols beyond ±:data:`MAX_SYMBOL` or not finite (:func:`check_range`);
* decodes from a zero-padded copy of the string, so that a damaged string's reads stay
  inside our buffer (:func:`padded`);
* accepts a decoded string only if its symbols lie within ±:data:`MAX_SYMBOL` and encode
  back to exactly the same bytes (:func:`check_decoded`) -- anything else raises
  :class:`LictutorError`. (Escape-coded values are raw bits, so a change to one of them is
  still a valid string: the ``.lic`` container's CRC is what catches such damage.)
"""

from __future__ import annotations

import warnings
from typing import List, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

# CompressAI's import uses torch.jit.script, which PyTorch deprecates, and imports torch_geometric,
# whose ``tqdm.auto`` warns in a notebook kernel without ipywidgets: neither is ours to show.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message="IProgress not found")
    from compressai import ans
    from compressai._CXX import pmf_to_quantized_cdf as _cxx_pmf_to_quantized_cdf

from lictutor.errors import LictutorError

__all__ = ["MAX_SYMBOL", "Tables", "pmf_to_quantized_cdf", "check_range", "encode", "decode", "padded",
           "stream_decoder", "check_symbols", "check_decoded"]

#: Largest magnitude of a coded symbol (integer offset from the median or mean). Far beyond
#: this the rANS coder's 32-bit arithmetic overflows; a trained model stays orders of
#: magnitude below.
MAX_SYMBOL = 2**24

#: ``(cdfs, lengths, offsets)``: one integer CDF per row, its used length, and the symbol its
#: entry 0 codes -- the tables ``compressai.ans`` takes, as lists
Tables = Tuple[List[List[int]], List[int], List[int]]


def pmf_to_quantized_cdf(pmf: Sequence[float], precision: int = 16) -> Tensor:
    """Integer CDF (0 ... 2**precision) for a pmf, every symbol getting frequency >= 1.

    The last pmf entry is the tail mass (the escape symbol for out-of-range values).
    Uses CompressAI's C++ routine so that our tables are bit-identical to its.
    """
    return torch.IntTensor(_cxx_pmf_to_quantized_cdf(list(pmf), precision))


def check_range(centered: Tensor) -> None:
    """Raise :class:`LictutorError` unless every value lies within ±:data:`MAX_SYMBOL` (NaN
    and infinities do not)."""
    if not bool(torch.all(centered.abs() <= MAX_SYMBOL)):  # also False for NaN
        raise LictutorError(
            f"cannot entropy-code latent values beyond ±{MAX_SYMBOL} or not finite (has the model diverged?)"
        )


def encode(symbols: List[int], indexes: List[int], tables: Tables) -> bytes:
    """One rANS string for ``symbols``, symbol ``i`` coded with the table ``indexes[i]``."""
    return ans.RansEncoder().encode_with_indexes(symbols, indexes, *tables)


def padded(string: bytes, symbols: int) -> bytes:
    """``string`` followed by enough zeros for ``symbols`` symbols to be decoded from it
    without reading past its end: 8 bytes per symbol, plus what escape codes can read (a valid
    string reads none of them)."""
    return bytes(string) + bytes(8 * symbols + 16 * len(string) + 4096)


def stream_decoder(string: bytes, symbols: int) -> ans.RansDecoder:
    """A rANS decoder over ``string`` (zero-padded for ``symbols`` symbols, :func:`padded`) that
    its ``decode_stream(indexes, *tables)`` reads a few symbols at a time: for a decoder whose
    tables depend on the symbols decoded before (chapter 4's serial context model). Check the
    whole string with :func:`check_decoded` at the end."""
    decoder = ans.RansDecoder()
    decoder.set_stream(padded(string, symbols))
    return decoder


def check_symbols(symbols: List[int], what: str) -> None:
    """Raise ``damaged entropy-coded string (what)`` unless decoded ``symbols`` lie within
    ±:data:`MAX_SYMBOL` (no valid string decodes to more)."""
    values = np.asarray(symbols, dtype=np.int64)
    if values.size and int(np.abs(values).max()) > MAX_SYMBOL:
        raise LictutorError(f"damaged entropy-coded string ({what})")


def check_decoded(symbols: List[int], indexes: List[int], tables: Tables, string: bytes, what: str) -> None:
    """Raise ``damaged entropy-coded string (what)`` unless ``symbols``, decoded from
    ``string``, lie within ±:data:`MAX_SYMBOL` (checked first: the encoder would not return
    on larger ones) and encode back to exactly ``string``."""
    check_symbols(symbols, what)
    if encode(symbols, indexes, tables) != bytes(string):
        raise LictutorError(f"damaged entropy-coded string ({what})")


def decode(string: bytes, indexes: List[int], tables: Tables, what: str) -> List[int]:
    """The symbols of ``string`` (one per entry of ``indexes``), checked
    (:func:`check_decoded`)."""
    if not isinstance(string, (bytes, bytearray)):
        raise LictutorError(f"an entropy-coded string must be bytes ({what})")
    symbols = ans.RansDecoder().decode_with_indexes(padded(string, len(indexes)), indexes, *tables)
    check_decoded(symbols, indexes, tables, string, what)
    return symbols
