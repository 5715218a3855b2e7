"""lictutor: learned image compression and knowledge distillation, built to be taught.

Importing the package is cheap; each module loads the heavy dependencies it needs (torch,
Pillow, CompressAI) when it is imported itself, e.g. ``from lictutor import data, metrics``.
The README's module table says what lives where.
"""

from lictutor.errors import LictutorError, LictutorWarning

__version__ = "0.1.0"
__all__ = ["LictutorError", "LictutorWarning", "__version__"]
