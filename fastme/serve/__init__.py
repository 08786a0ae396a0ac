"""Serving a trained model: score files (:mod:`fastme.serve.predict`) and export a self-contained
program for a server (:mod:`fastme.serve.export`). Both rebuild the model from the
:class:`~fastme.models.ModelSpec` its checkpoint carries."""

from fastme.serve.predict import Predictor, Summary, predict

__all__ = ["Predictor", "Summary", "predict"]
