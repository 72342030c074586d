"""onnxslim.frontends.tensorflow.export (skipped unless tensorflow and tf2onnx are installed)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")

from onnxslim.frontends.tensorflow import ExportError, export  # noqa: E402
from tests.helpers import run_ort  # noqa: E402


@pytest.fixture
def keras_model():
    tf.keras.utils.set_random_seed(0)
    inp = tf.keras.Input((8, 8, 3))
    y = tf.keras.layers.GlobalAveragePooling2D()(tf.keras.layers.Conv2D(4, 3, activation="relu")(inp))
    return tf.keras.Model(inp, [tf.keras.layers.Dense(2)(y), tf.keras.layers.Dense(3)(y)])


def test_keras_model_exports_and_matches(keras_model, tmp_path):
    x = np.random.default_rng(0).random((2, 8, 8, 3), dtype=np.float32)
    result = export(keras_model, [x], tmp_path / "k.onnx", input_names=["images"], dynamic_batch=True)
    assert result.outputs == 2 and result.max_abs_error < 1e-4 and result.opset == 17
    model = onnx.load(tmp_path / "k.onnx")
    onnx.checker.check_model(model)
    x5 = np.random.default_rng(1).random((5, 8, 8, 3), dtype=np.float32)
    got = run_ort(model, {"images": x5})
    np.testing.assert_allclose(got[model.graph.output[0].name], keras_model(x5)[0].numpy(), rtol=1e-4, atol=1e-5)


def test_saved_model_folder(keras_model, tmp_path):
    keras_model.export(str(tmp_path / "saved"))
    x = np.random.default_rng(0).random((1, 8, 8, 3), dtype=np.float32)
    result = export(tmp_path / "saved", [x], tmp_path / "s.onnx")
    assert result.converter.endswith("(saved_model)") and result.outputs == 2


def test_mismatch_is_an_error(keras_model, tmp_path, monkeypatch):
    import onnxslim.frontends.tensorflow as frontend

    monkeypatch.setattr(frontend, "_flatten", lambda outputs: [np.zeros((1, 2), np.float32) + 100, np.zeros((1, 3), np.float32)])
    with pytest.raises(ExportError, match="output 0"):
        export(keras_model, [np.ones((1, 8, 8, 3), np.float32)], tmp_path / "k.onnx")
    assert not (tmp_path / "k.onnx").exists()
