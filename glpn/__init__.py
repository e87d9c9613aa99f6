"""GLPN monocular depth estimation (Kim et al. 2022), compatible with HF checkpoints."""

from .checkpoint import CheckpointError
from .config import PRESETS, ConfigError, GLPNConfig
from .model import (
    DepthEstimatorOutput,
    GLPNDepth,
    GLPNForDepthEstimation,
    GLPNModel,
    SiLogLoss,
)
from .processing import GLPNFeatureExtractor, GLPNImageProcessor

__all__ = [
    "PRESETS",
    "CheckpointError",
    "ConfigError",
    "DepthEstimatorOutput",
    "GLPNConfig",
    "GLPNDepth",
    "GLPNFeatureExtractor",
    "GLPNForDepthEstimation",
    "GLPNImageProcessor",
    "GLPNModel",
    "SiLogLoss",
]
