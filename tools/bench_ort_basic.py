"""onnxruntime's own offline optimization at ORT_ENABLE_BASIC, as a peer tool for the bench.

    python tools/bench_ort_basic.py IN.onnx OUT.onnx

Basic level only applies graph rewrites that keep the model standard ONNX (constant folding,
redundant node elimination, semantics-preserving fusions), so the output runs anywhere.
"""

import sys

import onnxruntime as ort


def main() -> int:
    if len(sys.argv) != 3:
        sys.stderr.write(__doc__)
        return 2
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = sys.argv[2]
    ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
