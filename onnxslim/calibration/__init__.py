"""Calibration data for lossy passes: readers (streaming) and activation collection.

A :class:`CalibrationSet` yields feed dicts (input name -> array with a leading batch axis)
without holding the whole set in memory. Sources:

* ``.npz`` file: input name -> array, first axis = samples;
* a folder of ``.npz`` (one or more samples each, same layout) and/or ``.npy`` files (one
  sample each, single-input models only), read one file at a time in sorted order;
* :func:`synthetic`: seeded random inputs, for when the user gives none (callers must warn).
"""

from onnxslim.calibration.data import CalibrationSet, load_calibration, synthetic
from onnxslim.calibration.collect import ActivationCollector

__all__ = ["ActivationCollector", "CalibrationSet", "load_calibration", "synthetic"]
