"""Twins models and the named configurations."""

from .features import FeatureInfo, TwinsFeatures, feature_take_indices
from .registry import MODEL_CONFIGS, create_model, list_models
from .twins import Twins

__all__ = ["MODEL_CONFIGS", "FeatureInfo", "Twins", "TwinsFeatures", "create_model", "feature_take_indices", "list_models"]
