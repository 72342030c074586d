"""One exception hierarchy for the whole project.

Every error a user can cause is an :class:`OnnxSlimError`. The CLI prints its message on one
line and exits with :attr:`OnnxSlimError.exit_code`; the library never swallows them.
"""

from __future__ import annotations


class OnnxSlimError(Exception):
    """Base class: a problem the user can act on. Exit code 2 (bad input or usage)."""

    exit_code = 2


class InputModelError(OnnxSlimError):
    """The input model cannot be read, parsed or is not a valid ONNX graph."""


class UsageError(OnnxSlimError):
    """An option or argument is malformed or inconsistent with the model."""


class UnknownPassError(UsageError):
    """A pipeline string names a pass that is not registered."""


class OutputError(OnnxSlimError):
    """The output cannot be written (missing directory, no permission, disk full, same as input)."""


class PassFailedError(OnnxSlimError):
    """A pass raised on a graph it should have handled; the graph it produced is discarded."""


class VerificationFailedError(OnnxSlimError):
    """The optimized model's outputs differ from the original's beyond tolerance. Exit code 1."""

    exit_code = 1


class StrictModeError(OnnxSlimError):
    """An optional rewrite could not apply and ``strict`` was requested."""


def first_line(exc: BaseException | None, limit: int = 300) -> str:
    """The first non-empty line of an exception's message, at most ``limit`` characters (its
    type name when it has none): libraries' errors (onnxruntime, torch, TVM) span many lines."""
    lines = [line.strip() for line in str(exc or "").splitlines() if line.strip()]
    return lines[0][:limit] if lines else type(exc).__name__
