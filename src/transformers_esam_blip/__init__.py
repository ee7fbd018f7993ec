"""transformers-esam-blip: EfficientSAM promptable segmentation and BLIP image-text matching as `transformers` models.

Importing the package registers every class with the `transformers` Auto classes, and marks them so that saved
checkpoints carry an `auto_map` (loadable with `trust_remote_code=True` where this package is not installed).
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForMaskGeneration,
    AutoProcessor,
)

from . import (
    pipeline_pnp_vqa,  # noqa: F401  registers pipeline("esam-blip-pnp-vqa")
    pipelines,  # noqa: F401  registers pipeline("text-prompted-segmentation")
)
from .builtin import BUILTIN_MODELS, DEFAULT_BUILTIN_MODEL, builtin_model_path
from .configuration_esam_blip import (
    EfficientSamMaskDecoderConfig,
    EfficientSamPromptEncoderConfig,
    EfficientSamVisionConfig,
    EsamBlipConfig,
)
from .configuration_pnp_vqa import EsamBlipPnpVqaConfig
from .image_processing_esam_blip import EsamBlipImageProcessor
from .mask_generator import EsamBlipMaskGenerator
from .modeling_esam_blip import (
    EsamBlipForImageTextMatching,
    EsamBlipForPromptableSegmentation,
    EsamBlipModel,
    EsamBlipPreTrainedModel,
)
from .modeling_outputs import EsamBlipGradCamSegmentationOutput, EsamBlipModelOutput, EsamBlipSegmentationOutput
from .pipelines import PROMPTABLE_TASK, PromptableSegmentationPipeline
from .pnp_vqa import EsamBlipForPnpVqa, EsamBlipPnpVqaHeatmapOutput, EsamBlipPnpVqaOutput
from .processing_esam_blip import EsamBlipProcessor
from .prompts import PromptLabel
from .text_prompt_strategies import (
    EsamBlipTextPromptStrategy,
    register_text_prompt_strategy,
    text_prompt_mode_choices,
)

__version__ = "0.1.0"

AutoConfig.register(EsamBlipConfig.model_type, EsamBlipConfig, exist_ok=True)
AutoModel.register(EsamBlipConfig, EsamBlipModel, exist_ok=True)
AutoModelForMaskGeneration.register(EsamBlipConfig, EsamBlipForPromptableSegmentation, exist_ok=True)
AutoImageProcessor.register(EsamBlipConfig, EsamBlipImageProcessor, exist_ok=True)
AutoProcessor.register(EsamBlipConfig, EsamBlipProcessor, exist_ok=True)

EsamBlipConfig.register_for_auto_class()
EsamBlipModel.register_for_auto_class("AutoModel")
EsamBlipForPromptableSegmentation.register_for_auto_class("AutoModelForMaskGeneration")
EsamBlipImageProcessor.register_for_auto_class("AutoImageProcessor")
EsamBlipProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "BUILTIN_MODELS",
    "PROMPTABLE_TASK",
    "DEFAULT_BUILTIN_MODEL",
    "EfficientSamMaskDecoderConfig",
    "EfficientSamPromptEncoderConfig",
    "EfficientSamVisionConfig",
    "EsamBlipConfig",
    "EsamBlipForImageTextMatching",
    "EsamBlipForPnpVqa",
    "EsamBlipForPromptableSegmentation",
    "EsamBlipGradCamSegmentationOutput",
    "EsamBlipImageProcessor",
    "EsamBlipMaskGenerator",
    "EsamBlipModel",
    "EsamBlipModelOutput",
    "EsamBlipPnpVqaConfig",
    "EsamBlipPnpVqaHeatmapOutput",
    "EsamBlipPnpVqaOutput",
    "EsamBlipPreTrainedModel",
    "EsamBlipProcessor",
    "EsamBlipSegmentationOutput",
    "EsamBlipTextPromptStrategy",
    "PromptLabel",
    "PromptableSegmentationPipeline",
    "__version__",
    "builtin_model_path",
    "register_text_prompt_strategy",
    "text_prompt_mode_choices",
]
