"""The runtime dependencies are onnx, onnxruntime, onnx-graphsurgeon, numpy and click: importing
the CLI and every pass and stage must not pull anything else (scipy, torch, matplotlib, PIL)."""

import subprocess
import sys

import numpy as np

from onnxslim.pruning.groups import connected_labels


def test_cli_passes_and_stages_import_only_declared_dependencies():
    code = (
        "import sys, onnxslim.cli, onnxslim.pipeline as p; from onnxslim.stages import stages; "
        "p.registry(); stages(); "
        "print(','.join(sorted(m for m in ('scipy', 'torch', 'matplotlib', 'PIL', 'tvm') if m in sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""


def _components_bfs(n, rows, cols):
    adj = {i: set() for i in range(n)}
    for a, b in zip(rows, cols):
        adj[a].add(b)
        adj[b].add(a)
    seen, parts = set(), []
    for s in range(n):
        if s in seen:
            continue
        stack, part = [s], set()
        while stack:
            v = stack.pop()
            if v not in part:
                part.add(v)
                stack.extend(adj[v] - part)
        seen |= part
        parts.append(frozenset(part))
    return set(parts)


def test_connected_labels_matches_breadth_first_search():
    rng = np.random.default_rng(0)
    for n, e in [(1, 0), (12, 4), (300, 200), (2000, 1900)]:
        rows, cols = rng.integers(0, n, e), rng.integers(0, n, e)
        labels = connected_labels(n, rows, cols)
        parts = {}
        for node, label in enumerate(labels):
            parts.setdefault(int(label), set()).add(node)
        assert set(map(frozenset, parts.values())) == _components_bfs(n, rows, cols)
        assert sorted(parts) == list(range(len(parts)))
