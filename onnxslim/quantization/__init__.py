"""INT8 post-training quantization: placement rules, streaming calibration, Q/DQ emission, fallback.

Modules: :mod:`.rules` (where Q/DQ go per target/device), :mod:`.plan` (the placement decided for
one graph), :mod:`.histogram` and :mod:`.methods` (streaming statistics and range selection),
:mod:`.calibrate` (one inference pass over the samples), :mod:`.emit` (the graph rewrite),
:mod:`.sensitivity` (per-layer sensitivity and fallback), :mod:`.options` (option parsing).
The pass itself is ``onnxslim.passes.insert_qdq``; the CLI stage ``onnxslim.stages.quantize``.
"""

from onnxslim.quantization.histogram import TensorStats
from onnxslim.quantization.methods import METHODS, MethodSpec, select_range
from onnxslim.quantization.options import ErrorBudget, QuantOptions
from onnxslim.quantization.rules import RULES, PlacementRules, rules_for

__all__ = ["METHODS", "RULES", "ErrorBudget", "MethodSpec", "PlacementRules", "QuantOptions", "TensorStats",
           "rules_for", "select_range"]
