"""Helpers of the ``factorize_svd`` pass: the ``--svd`` spec, the linear algebra and statistics."""

from onnxslim.svd.linalg import Decomposition, ErrorProfile, Moments, choose_rank, decompose
from onnxslim.svd.spec import SvdSpec

__all__ = ["Decomposition", "ErrorProfile", "Moments", "SvdSpec", "choose_rank", "decompose"]
