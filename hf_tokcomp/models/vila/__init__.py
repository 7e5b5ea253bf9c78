"""VILA1.5 (NVlabs, 2024): a faithful transformers-style port with input-stage visual token compression."""

from .config import VilaConfig
from .modeling import VilaForConditionalGeneration, VilaPreTrainedForConditionalGeneration
from .processing import VilaProcessor
from .projector import MlpDownsampleProjector, merge_2x2
from .templates import TEMPLATES, ChatTemplate, template_for_checkpoint

__all__ = [
    "TEMPLATES",
    "ChatTemplate",
    "MlpDownsampleProjector",
    "VilaConfig",
    "VilaForConditionalGeneration",
    "VilaPreTrainedForConditionalGeneration",
    "VilaProcessor",
    "merge_2x2",
    "template_for_checkpoint",
]
