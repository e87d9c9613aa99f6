"""GLPN monocular depth estimation (Kim et al. 2022), compatible with HF checkpoints."""

from .checkpoint import CheckpointError
from .config import PRESETS, ConfigError, GLPNConfig
from .model import (
    GLPNDepth,
    GLPNForDepthEstimation,
    GLPNModel,
    GLPNPreTrainedModel,
    SiLogLoss,
)
from .outputs import BaseModelOutput, DepthEstimatorOutput, ModelOutput
from .processing import GLPNFeatureExtractor, GLPNImageProcessor

__all__ = [
    "PRESETS",
    "BaseModelOutput",
    "CheckpointError",
    "ConfigError",
    "DepthEstimatorOutput",
    "GLPNConfig",
    "GLPNDepth",
    "GLPNFeatureExtractor",
    "GLPNForDepthEstimation",
    "GLPNImageProcessor",
    "GLPNModel",
    "GLPNPreTrainedModel",
    "ModelOutput",
    "SiLogLoss",
]
