"""Structured channel pruning on ONNX graphs: dependency groups, importance, selection, rewrite
and least-squares reconstruction. The pass that drives it is ``onnxslim.passes.prune_channels``.
"""
