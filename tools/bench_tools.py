"""The tools the bench runs side by side, and the isolated virtual environments of the peers.

Each peer is installed, at a pinned version, into its own venv under ``.venv-bench/`` that the
bench creates itself; none is ever imported into this process. PyPI's ``onnxslim`` is a
different project that shares our name, so it must stay out of this environment. Peers run
with the work folder as their current directory and without ``PYTHONPATH``, so that neither
this checkout's ``onnxslim/`` folder nor our editable install can shadow their packages.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

log = logging.getLogger("bench")

TOOLS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TOOLS_DIR.parent
DEFAULT_VENVS = REPO_ROOT / ".venv-bench"
ONNX_PIN = "onnx==1.23.2"  # the same onnx as ours, so that differences come from the tools

# Launch our CLI through this interpreter (never a console script found on PATH).
OURS_LAUNCHER = "import sys; sys.argv[0] = 'onnxslim'; from onnxslim.cli import main; sys.exit(main())"

Argv = Callable[[Path, Path, Path, Path], list[str]]  # (bin dir, input, output, work dir) -> argv


@dataclass(frozen=True)
class Tool:
    """A program that rewrites ``input.onnx`` into ``output.onnx``."""

    name: str
    summary: str
    argv: Argv
    requirements: tuple[str, ...] = ()  # empty: runs with this interpreter, no venv

    @property
    def isolated(self) -> bool:
        return bool(self.requirements)


def _ours(bin_dir: Path, src: Path, dst: Path, work: Path) -> list[str]:
    report = work / f"{dst.stem}.report.json"
    # Our defaults, verification against onnxruntime included (the peers do not verify).
    return [sys.executable, "-c", OURS_LAUNCHER, "optimize", str(src), "-o", str(dst), "--report", str(report)]


TOOLS: dict[str, Tool] = {
    t.name: t
    for t in (
        Tool("ours", "this project: onnxslim optimize IN -o OUT (defaults: verification on)", _ours),
        Tool(
            "onnxslim-peer", "PyPI onnxslim (a different project): onnxslim IN OUT",
            lambda b, i, o, w: [str(b / "onnxslim"), str(i), str(o)], ("onnxslim==0.1.98", ONNX_PIN),
        ),
        Tool(
            "onnxsim", "onnx-simplifier: onnxsim IN OUT",
            lambda b, i, o, w: [str(b / "onnxsim"), str(i), str(o)], ("onnxsim==0.8.1", ONNX_PIN),
        ),
        Tool(
            "onnxoptimizer", "onnxoptimizer default passes: python -m onnxoptimizer IN OUT",
            lambda b, i, o, w: [str(b / "python"), "-m", "onnxoptimizer", str(i), str(o)], ("onnxoptimizer==0.4.2", ONNX_PIN),
        ),
        Tool(
            "ort-basic", "onnxruntime ORT_ENABLE_BASIC offline optimization (optimized_model_filepath)",
            lambda b, i, o, w: [sys.executable, str(TOOLS_DIR / "bench_ort_basic.py"), str(i), str(o)],
        ),
    )
}


def select_tools(names: str | None) -> list[Tool]:
    wanted = [n.strip() for n in (names or ",".join(TOOLS)).split(",") if n.strip()]
    unknown = [n for n in wanted if n not in TOOLS]
    if unknown:
        raise SystemExit(f"unknown tool(s): {', '.join(unknown)}; known: {', '.join(TOOLS)}")
    return [TOOLS[n] for n in wanted]


def venv_dir(tool: Tool, root: Path) -> Path:
    return root / tool.name


def bin_dir(tool: Tool, root: Path) -> Path:
    return venv_dir(tool, root) / "bin" if tool.isolated else Path(sys.executable).parent


class SetupError(RuntimeError):
    """A peer's virtual environment could not be created."""


def _stamp(tool: Tool) -> str:
    return "\n".join(tool.requirements) + "\n"


def ensure_venv(tool: Tool, root: Path) -> None:
    """Create the tool's venv with its pinned requirements, unless one with the same pins exists."""
    if not tool.isolated:
        return
    target = venv_dir(tool, root)
    stamp = target / "bench-requirements.txt"
    if stamp.is_file() and stamp.read_text() == _stamp(tool):
        return
    shutil.rmtree(target, ignore_errors=True)  # venvs are not relocatable: build in place
    log.info("creating venv %s: %s", target, " ".join(tool.requirements))
    steps = [
        [sys.executable, "-m", "venv", str(target)],
        [str(target / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", *tool.requirements],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, env=peer_env())
        if done.returncode != 0:
            shutil.rmtree(target, ignore_errors=True)
            lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
            raise SetupError(f"{' '.join(step[:4])}: {lines[-1] if lines else 'failed'}")
    stamp.write_text(_stamp(tool))  # written last: marks the venv complete


def peer_env() -> dict[str, str]:
    """The environment tools run in: no PYTHONPATH, no venv leaking in, plain narrow output."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(COLUMNS="120", NO_COLOR="1", PYTHONWARNINGS="ignore")
    return env


def tool_command(tool: Tool, venvs: Path, src: Path, dst: Path, work: Path) -> list[str]:
    return tool.argv(bin_dir(tool, venvs), src, dst, work)


def setup_all(tools: Sequence[Tool], venvs: Path) -> dict[str, str]:
    """Create every venv needed; returns {tool name: error} for those that failed."""
    errors = {}
    for tool in tools:
        try:
            ensure_venv(tool, venvs)
        except SetupError as error:
            log.error("%s: %s", tool.name, error)
            errors[tool.name] = f"setup: {error}"
    return errors
