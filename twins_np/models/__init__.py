"""Twins models and the named configurations."""

from .registry import MODEL_CONFIGS, create_model, list_models
from .twins import Twins

__all__ = ["MODEL_CONFIGS", "Twins", "create_model", "list_models"]
