"""Networks: the UNet eps-model and the ``MODELS`` registry of named presets."""
from .presets import MODELS, ModelPreset, UNetPreset, build_model, count_parameters, describe_models
from .unet import UNet
from . import dit  # noqa: F401,E402 - registers the DiT presets

__all__ = ["MODELS", "ModelPreset", "UNet", "UNetPreset", "build_model", "count_parameters",
           "describe_models"]
