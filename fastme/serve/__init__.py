"""Serving a trained model: score files (:mod:`fastme.serve.predict`) and export a self-contained
program for a server (:mod:`fastme.serve.export`). Both rebuild the model from the
:class:`~fastme.models.ModelSpec` its checkpoint carries."""

from fastme.serve.export import export, load_pt2
from fastme.serve.predict import Predictor, Summary, predict

__all__ = ["Predictor", "Summary", "export", "load_pt2", "predict"]
