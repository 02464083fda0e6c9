"""Twins models, the named configurations, and the segmenters (Semantic FPN, UPerNet) built on them."""

from .features import FeatureInfo, TwinsFeatures, feature_take_indices
from .registry import MODEL_CONFIGS, create_model, list_models
from .segmentation import (
    FPN,
    PPM,
    SEGMENTER_CONFIGS,
    FCNHead,
    FPNHead,
    Segmenter,
    UPerHead,
    create_segmenter,
    list_segmenters,
)
from .twins import Twins

__all__ = [
    "FPN",
    "FCNHead",
    "MODEL_CONFIGS",
    "PPM",
    "SEGMENTER_CONFIGS",
    "FPNHead",
    "FeatureInfo",
    "Segmenter",
    "Twins",
    "TwinsFeatures",
    "UPerHead",
    "create_model",
    "create_segmenter",
    "feature_take_indices",
    "list_models",
    "list_segmenters",
]
