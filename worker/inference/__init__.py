"""Inference: the CNN and the SVM on ONNX Runtime, and their model cards.

Two models ship in ``worker/models/``, both demonstration models trained on synthetic phantoms
by ``scanstream train`` (:mod:`worker.training`); neither is clinically validated:

* ``lesion-cnn`` reads the frame's display window (CT soft tissue, W400/L40) resized to 64x64
  with area interpolation (:func:`cnn_input`): input ``image`` (N, 1, 64, 64) float32 in [0, 1].
* ``lesion-svm`` reads the imaging stage's feature vector
  (:data:`worker.imaging.FEATURE_NAMES`): input ``features`` (N, F) float32, raw (the
  standardisation is inside the graph). Its RBF kernel is written in standard ONNX operators
  (Sub, Mul, ReduceSum, Exp, MatMul), not ``ai.onnx.ml.SVMClassifier``, so that it runs on the
  CUDA provider too.

:meth:`ModelSet.load` checks every ``model.onnx`` against the sha256 in its card and reports the
execution provider really in use (:attr:`ModelSet.provider`). Frames are batched across the
events of one poll by :class:`worker.pipeline.Pipeline`.

Adding your own ONNX classifier
-------------------------------
A models directory holds one sub-directory per model, ``<dir>/<name>/model.onnx`` and
``<dir>/<name>/card.json``. The worker needs exactly one model of each ``input_kind``:

* ``"image"``: one input of shape ``[null, 1, 64, 64]`` (null = dynamic batch), float32 in
  [0, 1], the frame's display window resized by :func:`cnn_input`;
* ``"features"``: one input of shape ``[null, F]``, float32, the raw feature vector; the card's
  ``feature_names`` must equal :data:`worker.imaging.FEATURE_NAMES` (else start fails).

Each model must have two outputs of shape (N,) or (N, 1): the probability of the positive label
and a raw score (logit, decision value); the card's ``outputs`` maps ``"probability"`` and
``"score"`` to their names. Use ONNX IR version <= 10 and opset <= 17 so that onnxruntime-gpu
accepts it, and standard operators if it should run on CUDA. The card (JSON object) fields:

==================  ===========================================================================
schema_version      1
name, version       shown in findings, metrics and logs (``models[]``)
task                one line: what it classifies
intended_use        who may use it for what (the shipped cards: demonstration only)
input_kind          ``"image"`` or ``"features"``
input_name          the graph's input name
input_shape         e.g. ``[null, 1, 64, 64]``; must equal the graph's
input_dtype         ``"float32"``
feature_names       the feature names in order (``"features"`` models), else null
outputs             ``{"probability": "<output name>", "score": "<output name>"}``
preprocessing       free text: what the input is and how it was made
labels              ``[negative, positive]``, e.g. ``["normal", "lesion"]`` (both models alike)
decision_threshold  probability at or above which the frame is called positive
sha256              hex SHA-256 of ``model.onnx``: ``sha256sum model.onnx``
training            free JSON object: data, method, seed, hyper-parameters
evaluation          free JSON object: held-out figures (AUC, sensitivity, specificity ...)
input_domain        optional: what the model learnt from (modalities, rows/columns, pixel
                    spacing, values, a Gaussian of the feature vectors with its threshold; the
                    format is in :mod:`worker.inference.domain`). Without it the model's
                    classifications say ``in_domain: null`` and never raise an alert
calibration         optional, free JSON object: how its probability was calibrated and the
                    expected calibration error before and after (the shipped cards also name
                    the reliability diagram written next to the card)
==================  ===========================================================================

Copy the shipped directory, replace one model's files, and point the worker at the copy with
``SCANSTREAM_MODELS_DIR=/path/to/models`` (or ``--models-dir``). ``scanstream models verify``
checks the hashes; ``scanstream models list`` shows what will load.

>>> sorted(c.name for c in list_models())
['lesion-cnn', 'lesion-svm']
"""

from worker.inference.cards import (
    DEMO_NOTICE,
    ModelCard,
    default_models_dir,
    list_models,
    verify_models,
)
from worker.inference.models import ModelSet, Prediction, cnn_input

__all__ = [
    "DEMO_NOTICE",
    "ModelCard",
    "ModelSet",
    "Prediction",
    "cnn_input",
    "default_models_dir",
    "list_models",
    "verify_models",
]
