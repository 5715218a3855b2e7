"""The exception users of lictutor need to catch, and the category of its warnings."""


class LictutorError(Exception):
    """A clear, user-facing error: bad input, a corrupt file, a wrong checkpoint.

    Raised instead of letting a traceback escape from deep inside NumPy, Pillow or
    PyTorch. The message says what was wrong and, where it helps, which file.
    """


class LictutorWarning(UserWarning):
    """Something lictutor did differently from what was asked, and carried on: an image file
    skipped or read from its first frame only, a damaged cache entry trained again. The
    command line prints each as one line, ``lictutor: warning: ...``."""
