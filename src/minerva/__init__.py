"""Minerva: a fast local LLM inference engine."""

__version__ = "0.1.0"
