"""Entropy models: how many bits a latent costs, and the tables that code it.

* :mod:`~lictutor.entropy.base` -- :class:`EntropyModel`, the shared machinery: integer CDF
  tables (``_quantized_cdf``, ``_offset``, ``_cdf_length``), when they are rebuilt, and coding
  symbols with them.
* :mod:`~lictutor.entropy.bottleneck` -- :class:`EntropyBottleneck`, the learned, fully
  factorized density of Ballé, Minnen, Singh, Hwang & Johnston (2018), "Variational image
  compression with a scale hyperprior", appendix 6.1.
* :mod:`~lictutor.entropy.gaussian` -- :class:`GaussianConditional`, the conditional Gaussian
  of the same paper (sec. 3): each element has its own scale (and optionally mean), predicted
  by a hyperprior.
* :mod:`~lictutor.entropy.mixture` -- :class:`GaussianMixtureConditional`, a mixture of
  Gaussians per element (Cheng et al. 2020), coded with one table per element.
* :mod:`~lictutor.entropy.coder` -- CompressAI's rANS coder (``compressai.ans``; entropy coding
  itself is not the lesson here), checked so that damaged strings and values it cannot code
  raise :class:`~lictutor.LictutorError`.

Written from scratch, with CompressAI's parameter and buffer names, so CompressAI state dicts
load into ours (and back). The tests compare likelihoods, the auxiliary loss, the CDF tables
and the compressed bytes with ``compressai.entropy_models``.
"""

from lictutor.entropy.base import EntropyModel, update_stale_tables
from lictutor.entropy.bottleneck import EntropyBottleneck
from lictutor.entropy.coder import MAX_SYMBOL, pmf_to_quantized_cdf
from lictutor.entropy.gaussian import (  # noqa: F401 (the scale table's constants re-exported)
    SCALES_LEVELS, SCALES_MAX, SCALES_MIN, GaussianConditional, get_scale_table, standard_normal_cdf,
)
from lictutor.entropy.mixture import GaussianMixtureConditional

__all__ = [
    "EntropyModel",
    "EntropyBottleneck",
    "GaussianConditional",
    "GaussianMixtureConditional",
    "get_scale_table",
    "standard_normal_cdf",
    "pmf_to_quantized_cdf",
    "update_stale_tables",
    "MAX_SYMBOL",
]
