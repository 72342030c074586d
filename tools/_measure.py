"""Run one command in a fresh process and measure its wall time and peak resident memory.

The peak RSS comes from ``os.wait4`` on exactly that child: Linux reports the child's own
high-water mark, or that of a descendant it waited for if larger (``ru_maxrss`` in KiB). No
sampling, so short peaks are not missed.

As a script it prints the measurement as one JSON line::

    python tools/_measure.py [--timeout S] -- CMD ARGS...
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

TAIL_CHARS = 2000


@dataclass(frozen=True)
class Measurement:
    """What one measured process did."""

    command: list[str]
    returncode: int
    wall_s: float
    peak_rss_mb: float
    timed_out: bool
    stdout_tail: str
    stderr_tail: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def error_line(self) -> str:
        """A one-line reason for a failure, for a results table."""
        if self.timed_out:
            return f"timed out after {self.wall_s:.0f} s"
        lines = [line.strip() for line in (self.stderr_tail or self.stdout_tail).splitlines() if line.strip()]
        detail = lines[-1] if lines else "no output"
        return f"exit {self.returncode}: {detail}"


def _tail(path: Path) -> str:
    with open(path, "rb") as stream:
        stream.seek(0, os.SEEK_END)
        stream.seek(max(0, stream.tell() - TAIL_CHARS))
        return stream.read().decode("utf-8", errors="replace")


def _wait(pid: int, deadline: float | None) -> tuple[int, object] | None:
    """wait4 the child, polling so that a deadline can be kept; None when it passes."""
    delay = 0.001
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done == pid:
            return status, usage
        if deadline is not None and time.monotonic() >= deadline:
            return None
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def run_measured(
    command: Sequence[str],
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    isolate: bool = True,
) -> Measurement:
    """Run ``command`` to completion (or ``timeout`` seconds), returning time, peak RSS and output tails.

    Linux carries a process's peak RSS across fork and exec, so a child forked from a large
    process (pytest, the bench) would report the parent's size. With ``isolate`` the command is
    started from a small launcher process (this file's CLI), whose child starts from ~15 MB.
    """
    if isolate:
        launcher = [sys.executable, str(Path(__file__).resolve())]
        if timeout is not None:
            launcher += ["--timeout", str(timeout)]
        done = subprocess.run([*launcher, "--", *command], capture_output=True, text=True,
                              env=dict(env) if env is not None else None, cwd=cwd)
        try:
            return Measurement(**json.loads(done.stdout))
        except (json.JSONDecodeError, TypeError):
            return Measurement(list(command), done.returncode or 1, 0.0, 0.0, False, done.stdout[-2000:], done.stderr[-2000:])
    with tempfile.TemporaryDirectory(prefix="measure-") as tmp:
        out_path, err_path = Path(tmp, "stdout"), Path(tmp, "stderr")
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            start = time.monotonic()
            try:
                proc = subprocess.Popen(
                    list(command), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                    env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True,
                )
            except OSError as error:  # not found, not executable: a failed run, not a crash
                return Measurement(list(command), 127, time.monotonic() - start, 0.0, False, "", f"{error}\n")
            waited = _wait(proc.pid, None if timeout is None else start + timeout)
            timed_out = waited is None
            if timed_out:
                os.killpg(proc.pid, signal.SIGKILL)
                waited = _wait(proc.pid, None)
            wall = time.monotonic() - start
        status, usage = waited
        proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait again
        return Measurement(
            command=list(command),
            returncode=proc.returncode,
            wall_s=wall,
            peak_rss_mb=usage.ru_maxrss / 1024.0,
            timed_out=timed_out,
            stdout_tail=_tail(out_path),
            stderr_tail=_tail(err_path),
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=None, help="seconds before the command is killed")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    result = run_measured(command, timeout=args.timeout, isolate=False)
    json.dump(asdict(result), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
