"""Architecture registry: `build_model(arch, num_classes, **arch_kwargs)`; models register beside their definition."""
from models.base import (
                         MODELS,
                         ClassifierMixin,
                         architectures,
                         build_model,
                         classes_from_head,
                         classifier_outputs,
                         head_key_patterns,
                         model_task,
)

# Importing the definitions registers them; timm's and torchvision's catalogues answer 'timm:NAME' and 'tv:NAME'.
from models import mobilenet, resnet, small_resnet, yolov5  # noqa: E402,F401  isort: skip
from models.external import PREFIXES, resolve  # noqa: E402  isort: skip

for _prefix in PREFIXES:
    MODELS.add_resolver(_prefix, lambda name, prefix=_prefix: resolve(prefix, name))

__all__ = ["MODELS", "ClassifierMixin", "architectures", "build_model", "classes_from_head", "classifier_outputs",
           "head_key_patterns", "model_task"]
