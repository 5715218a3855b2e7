"""Learned image codecs, written from scratch with CompressAI-compatible state dicts.

``create(name, **kwargs)`` builds a model by its name in :data:`MODELS` (the names
the trainer and checkpoints use).
"""

from numbers import Integral

from lictutor.errors import LictutorError
from lictutor.models.base import CompressionModel
from lictutor.models.checkerboard import CheckerboardContext
from lictutor.models.factorized import FactorizedPrior, FactorizedPrior2017
from lictutor.models.context import JointAutoregressiveHierarchicalPriors
from lictutor.models.fast import FastLIC
from lictutor.models.generative import GenerativeHyperprior, MicrodosingStudent
from lictutor.models.hyperprior import MeanScaleHyperprior, ScaleHyperprior

__all__ = [
    "CompressionModel", "FactorizedPrior", "FactorizedPrior2017", "ScaleHyperprior",
    "MeanScaleHyperprior", "JointAutoregressiveHierarchicalPriors", "CheckerboardContext",
    "FastLIC", "GenerativeHyperprior", "MicrodosingStudent", "MODELS", "MAX_CHANNELS", "create",
]

#: the most channels ``N`` or ``M`` (or mixture components) :func:`create` builds: 1024 is five
#: times the widest published model (M = 320), and bounds the memory a crafted checkpoint can ask for
MAX_CHANNELS = 1024

#: name -> model class
MODELS = {
    "factorized": FactorizedPrior,  # Ballé et al. 2018 (CompressAI "bmshj2018-factorized")
    "factorized2017": FactorizedPrior2017,  # Ballé et al. 2017
    "hyperprior": ScaleHyperprior,  # Ballé et al. 2018 (CompressAI "bmshj2018-hyperprior")
    "mean-scale": MeanScaleHyperprior,  # Minnen et al. 2018 (CompressAI "mbt2018-mean")
    "context": JointAutoregressiveHierarchicalPriors,  # Minnen et al. 2018 (CompressAI "mbt2018")
    "checkerboard": CheckerboardContext,  # He et al. 2021
    "fast": FastLIC,  # after Fu et al. 2023 (improved checkerboard, DRM, channel skipping)
    "generative": GenerativeHyperprior,  # HiFiC-style teacher (Mentzer et al. 2020), chapter 6
    "microdosing": MicrodosingStudent,  # Helminger et al. 2021's small student decoder, chapter 6
}


def create(name: str, **kwargs) -> CompressionModel:
    """A new, randomly initialized model: ``create("factorized", N=128, M=192)``.

    Whole-number arguments (``N``, ``M``, ``components``, ``decoder_N``, ``blocks``, ``width``,
    ``condition``) must lie in 1 … :data:`MAX_CHANNELS`.
    """
    if name not in MODELS:
        raise LictutorError(f"unknown model {name!r}; available: {', '.join(MODELS)}")
    for arg in ("N", "M", "components", "decoder_N", "blocks", "width", "condition"):
        value = kwargs.get(arg, 1)
        if value is None and arg in ("decoder_N", "width"):  # their defaults follow N
            continue
        if isinstance(value, bool) or not isinstance(value, Integral) or not 1 <= value <= MAX_CHANNELS:
            raise LictutorError(f"bad arguments for model {name!r}: {arg} must be a whole number "
                                f"from 1 to {MAX_CHANNELS}, got {value!r:.40}")
    try:
        return MODELS[name](**kwargs)
    except TypeError as err:
        raise LictutorError(f"bad arguments for model {name!r}: {err}") from None
