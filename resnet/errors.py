"""What counts as a user's error (bad input, a bad environment) rather than a bug, and how it prints: one line.

The command line and the library (a suite's worker processes, the server) share these, so an error reads the
same wherever it is reported.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


def expected_failures() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input or a bad environment (not a bug): printed as one line, exit status 2."""
    import torch  # lazy: the CLI imports this module before parsing, and `--help` must not load torch
    from safetensors import SafetensorError

    return (UserError, ValueError, OSError, ConnectionError, SafetensorError, torch.cuda.OutOfMemoryError)


def one_line(error: BaseException) -> str:
    """The error as one line; an OSError names its file ('PATH: No space left on device'), for a rename the target."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename2 or error.filename}: {error.strerror}"
    text = " ".join(str(error).split())
    return text or type(error).__name__
