"""The one exception users of lictutor need to catch."""


class LictutorError(Exception):
    """A clear, user-facing error: bad input, a corrupt file, a wrong checkpoint.

    Raised instead of letting a traceback escape from deep inside NumPy, Pillow or
    PyTorch. The message says what was wrong and, where it helps, which file.
    """
