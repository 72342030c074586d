"""Framework front ends: export a PyTorch module or a TensorFlow/Keras model to a checked ONNX file.

``onnxslim.frontends.torch.export`` (needs torch) and ``onnxslim.frontends.tensorflow.export``
(needs tensorflow and tf2onnx) write the model atomically and compare onnxruntime's outputs with
the framework's on the example inputs before they return. Import the submodule you need; this
package imports no framework.
"""
