"""Progress bars for long work (calibration, verification, compiling): stderr only, TTY only.

    from onnxslim.progress import progress, track

    with progress("calibrating", total=len(samples), unit="samples") as bar:
        for batch in batches:
            ...
            bar.update(len(batch))

    for feeds in track(feeds_list, "verifying", unit="samples"):
        ...

A bar draws one self-overwriting line on stderr, at most ten times a second, and only when
stderr is a terminal; elsewhere (CI logs, pipes, ``-q``) it costs nothing and prints nothing.
The CLI turns bars off for a block of work with ``with progress_disabled(): ...`` (a context
variable, so threads and nested calls see the setting of their own context).
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import time
from typing import Iterable, Iterator, TextIO, TypeVar

T = TypeVar("T")

_ENABLED: contextvars.ContextVar[bool] = contextvars.ContextVar("onnxslim_progress_enabled", default=True)
_REDRAW_SECONDS = 0.1
_WIDTH = 24


@contextlib.contextmanager
def progress_disabled(disabled: bool = True) -> Iterator[None]:
    """Within this block, bars print nothing (the CLI uses it for ``-q``)."""
    token = _ENABLED.set(not disabled)
    try:
        yield
    finally:
        _ENABLED.reset(token)


def _is_tty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class ProgressBar:
    """One line: ``label [#####-----] 12/40 samples 3.1/s``; without a total, a counter."""

    def __init__(self, label: str, total: int | None = None, unit: str = "", stream: TextIO | None = None,
                 enabled: bool | None = None):
        self.stream = stream if stream is not None else sys.stderr
        wanted = _ENABLED.get() if enabled is None else enabled
        self.enabled = wanted and _is_tty(self.stream)
        self.label, self.total, self.unit = label, total, unit
        self.done = 0
        self.start = time.perf_counter()
        self._drawn = 0.0
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._drawn >= _REDRAW_SECONDS or (self.total is not None and self.done >= self.total):
            self._drawn = now
            self._draw(now)

    def _draw(self, now: float, end: str = "") -> None:
        elapsed = max(now - self.start, 1e-9)
        unit = f" {self.unit}" if self.unit else ""
        if self.total:
            filled = min(_WIDTH, int(_WIDTH * self.done / self.total))
            bar = f"[{'#' * filled}{'-' * (_WIDTH - filled)}] {self.done}/{self.total}{unit}"
        else:
            bar = f"{self.done}{unit}"
        self.stream.write(f"\r{self.label} {bar} {self.done / elapsed:.1f}/s, {elapsed:.1f}s\x1b[K{end}")
        self.stream.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.enabled:
            self._draw(time.perf_counter(), end="\n")

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(label: str, total: int | None = None, unit: str = "", stream: TextIO | None = None,
             enabled: bool | None = None) -> ProgressBar:
    """A :class:`ProgressBar`; use it as a context manager so that its line is finished."""
    return ProgressBar(label, total, unit, stream, enabled)


def track(items: Iterable[T], label: str, total: int | None = None, unit: str = "", stream: TextIO | None = None) -> Iterator[T]:
    """Yield ``items`` while drawing a bar (total taken from ``len(items)`` when it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress(label, total, unit, stream) as bar:
        for item in items:
            yield item
            bar.update(1)



def say(text: str) -> None:
    """Print ``text`` on stdout. When the reader has gone (``onnxslim inspect m.onnx | head -1``),
    stdout is pointed at /dev/null and the command goes on: what it writes to files, its exit
    code and its errors on stderr do not depend on who reads its stdout."""
    import os

    try:
        print(text, flush=True)
    except BrokenPipeError:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):  # a stdout without a file descriptor
            pass
