"""Turns scheduled batches into forward passes on the device."""

from minerva.runner.model_runner import ModelRunner

__all__ = ["ModelRunner"]
