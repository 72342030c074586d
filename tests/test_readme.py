"""The README's two set-up commands are the ones that work (and the one CI runs)."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.S)


def test_ci_runs_the_readme_test_command():
    test_command = _bash_blocks()[1].strip()
    assert test_command == 'pip install -e ".[test]" && python -m pytest -q'
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_readme_quick_start_optimizes_the_example(tmp_path):
    install, rest = _bash_blocks()[0].strip().split(" && ", 1)
    assert install == "pip install -e ."  # already installed for the tests; the rest runs as written
    rest = rest.replace("python tools/", f"{sys.executable} {ROOT}/tools/").replace("onnxslim optimize", f"{sys.executable} -m onnxslim.cli optimize")
    done = subprocess.run(["bash", "-c", rest], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "verification passed" in done.stdout
    assert re.search(r"^nodes\s+27\s+10\s", done.stdout, flags=re.M), done.stdout
    assert (tmp_path / "example.opt.onnx").is_file()
