"""Reproducible training of the shipped demonstration models (``scanstream train``).

Needs the ``dev`` extras (scikit-learn, onnx); the worker itself does not. Everything is
deterministic numpy / scikit-learn code on synthetic phantoms: no deep-learning framework, no
download, no patient data. :func:`train_all` writes ``<out_dir>/<name>/model.onnx`` and
``card.json`` (with the calibration and the input domain) and ``reliability.png`` for
``lesion-cnn`` and ``lesion-svm`` and returns their held-out figures; the models in
``worker/models`` are its output for ``seed=0``.
"""

from worker.training.train import REPRODUCIBILITY_TOLERANCE, train_all

__all__ = ["REPRODUCIBILITY_TOLERANCE", "train_all"]
