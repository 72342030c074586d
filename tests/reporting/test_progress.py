"""onnxslim.progress: silent unless stderr is a terminal; a self-overwriting line when it is."""

from __future__ import annotations

import io

from onnxslim.progress import progress, progress_disabled, track


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_silent_when_not_a_terminal():
    stream = io.StringIO()
    with progress("calibrating", total=10, unit="samples", stream=stream) as bar:
        for _ in range(10):
            bar.update()
    assert stream.getvalue() == "" and bar.done == 10


def test_draws_on_a_terminal_and_finishes_the_line():
    stream = Terminal()
    with progress("calibrating", total=4, unit="samples", stream=stream) as bar:
        bar.update(2)
        bar.update(2)
    text = stream.getvalue()
    assert text.startswith("\rcalibrating [") and "4/4 samples" in text and text.endswith("\n")
    assert "\n" not in text[:-1], "one line, redrawn in place"


def test_counter_without_total_and_track():
    stream = Terminal()
    assert list(track(iter(range(3)), "verifying", unit="runs", stream=stream)) == [0, 1, 2]
    assert "3 runs" in stream.getvalue()
    stream = Terminal()
    assert list(track([1, 2], "verifying", stream=stream)) == [1, 2]
    assert "2/2" in stream.getvalue()


def test_disabled_context_silences_terminals_too():
    stream = Terminal()
    with progress_disabled():
        with progress("compiling", total=1, stream=stream) as bar:
            bar.update()
    assert stream.getvalue() == ""
    with progress("compiling", total=1, stream=stream) as bar:  # back on outside the block
        bar.update()
    assert stream.getvalue()


def test_close_is_idempotent():
    stream = Terminal()
    bar = progress("x", total=1, stream=stream)
    bar.update()
    bar.close()
    bar.close()
    assert stream.getvalue().count("\n") == 1
