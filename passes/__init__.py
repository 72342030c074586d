"""Graph passes, one module each. Every ``Pass`` subclass defined here is registered by name.

See :mod:`onnxslim.pipeline` for the protocol. Installed as ``onnxslim.passes``.
"""
