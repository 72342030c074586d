"""usable_cores: sessions size their thread pools to the cores the process may run on."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from onnxslim.cpu import usable_cores


def test_capped_and_at_least_one():
    assert 1 <= usable_cores() <= 4
    assert usable_cores(cap=1) == 1
    assert usable_cores(cap=64) >= usable_cores()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux CPU affinity")
def test_follows_the_affinity_mask_not_the_machine():
    one = min(os.sched_getaffinity(0))
    code = (f"import os; os.sched_setaffinity(0, {{{one}}}); "
            "from onnxslim.cpu import usable_cores; print(usable_cores(cap=64), os.cpu_count())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert int(out[0]) == 1  # pinned to one core (os.cpu_count() still says out[1])
