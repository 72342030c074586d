"""Shared pieces of channel-dependency analysis: slots, links, and small shape readers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxslim.graph import constant_value, is_constant


class Blocked(Exception):
    """The node cannot be reasoned about for this slot; the message is the reason."""


@dataclass
class Link:
    tensor: gs.Tensor
    axis: int
    mine: np.ndarray
    theirs: np.ndarray


# --------------------------------------------------------------------------------------------
# Small readers


def static_dim(tensor: gs.Tensor, axis: int) -> int | None:
    shape = tensor.shape
    if shape is None or not -len(shape) <= axis < len(shape):
        return None
    d = shape[axis]
    return int(d) if isinstance(d, (int, np.integer)) and d >= 0 else None


def tensor_rank(tensor: gs.Tensor) -> int | None:
    return None if tensor.shape is None else len(tensor.shape)


def const_ints(tensor: gs.Tensor | None) -> list[int] | None:
    value = constant_value(tensor)
    return None if value is None else [int(v) for v in np.asarray(value).ravel()]


def node_axes(node: gs.Node) -> list[int] | None:
    """``axes`` of Squeeze/Unsqueeze/Reduce*: the attribute (older opsets) or input 1; [] when absent."""
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    if len(node.inputs) > 1 and node.inputs[1].name:
        return const_ints(node.inputs[1])
    return []


def identity(t: gs.Tensor, axis: int, size: int) -> Link:
    idx = np.arange(size)
    return Link(t, axis, idx, idx)


def require_size(t: gs.Tensor, axis: int, size: int, what: str) -> None:
    have = static_dim(t, axis)
    if have != size:
        raise Blocked(f"{what}: channel count {have} of {t.name!r} does not match {size}")


def is_var(t: gs.Tensor) -> bool:
    return bool(t.name) and not is_constant(t)
