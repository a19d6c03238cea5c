"""Model architectures (one file per family) and the registry that picks one."""

from minerva.models.registry import MODEL_REGISTRY, build_model

__all__ = ["MODEL_REGISTRY", "build_model"]
