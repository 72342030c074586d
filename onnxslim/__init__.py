"""onnxslim: a framework-agnostic ONNX graph-rewriting compiler.

Public API::

    import onnxslim
    model, report = onnxslim.optimize("model.onnx")            # default cleanup, verified
    onnxslim.optimize_file("model.onnx", "model.opt.onnx")     # atomic, verifies from disk
    onnxslim.save(model, "out.onnx"); onnxslim.load("out.onnx")
"""

from onnxslim.api import optimize, optimize_file
from onnxslim.errors import OnnxSlimError, VerificationFailedError
from onnxslim.io import load, save
from onnxslim.pipeline import DEFAULT_PIPELINE, Pass, PassContext, PassResult, Pipeline, registry
from onnxslim.verify import verify

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_PIPELINE",
    "OnnxSlimError",
    "Pass",
    "PassContext",
    "PassResult",
    "Pipeline",
    "VerificationFailedError",
    "load",
    "optimize",
    "optimize_file",
    "registry",
    "save",
    "verify",
]
