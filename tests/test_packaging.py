"""The built distribution contains every sub-package (a wheel missing one imports but breaks)."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {"onnxslim"} | {
        "onnxslim." + ".".join(p.relative_to(ROOT / "onnxslim").parts)
        for p in (ROOT / "onnxslim").rglob("*")
        if p.is_dir() and (p / "__init__.py").exists()
    }
    found.add("onnxslim.passes")
    assert found == listed
    assert config["package-dir"]["onnxslim.passes"] == "passes"


def test_installed_package_imports_outside_the_repo(tmp_path):
    """An editable install must give the real package (not a namespace) from any folder."""
    import subprocess
    import sys

    code = "import onnxslim, onnxslim.passes; print(onnxslim.__file__ is not None, hasattr(onnxslim, 'optimize'))"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", "True"]
