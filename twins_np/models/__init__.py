"""Twins models, the named configurations, and the Semantic FPN segmenter built on them."""

from .features import FeatureInfo, TwinsFeatures, feature_take_indices
from .registry import MODEL_CONFIGS, create_model, list_models
from .segmentation import FPN, SEGMENTER_CONFIGS, FPNHead, Segmenter, create_segmenter, list_segmenters
from .twins import Twins

__all__ = [
    "FPN",
    "MODEL_CONFIGS",
    "SEGMENTER_CONFIGS",
    "FPNHead",
    "FeatureInfo",
    "Segmenter",
    "Twins",
    "TwinsFeatures",
    "create_model",
    "create_segmenter",
    "feature_take_indices",
    "list_models",
    "list_segmenters",
]
