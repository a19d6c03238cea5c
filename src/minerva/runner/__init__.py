"""Turns scheduled batches into forward passes on the device: Worker builds everything
device-side (worker.py); ModelRunner executes steps (model_runner.py)."""

from minerva.runner.model_runner import ModelRunner

__all__ = ["ModelRunner"]
