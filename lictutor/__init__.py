"""lictutor: learned image compression and knowledge distillation, built to be taught.

Importing the package is cheap; heavy dependencies (torch, Pillow, CompressAI) load
inside the submodules that need them::

    from lictutor import budget, data, metrics, codecs, plot
"""

from lictutor.errors import LictutorError

__version__ = "0.1.0"
__all__ = ["LictutorError", "__version__"]
