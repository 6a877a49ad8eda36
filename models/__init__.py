"""Architecture registry: `build_model(arch, num_classes, **arch_kwargs)`; models register beside their definition."""
from models.base import MODELS, ClassifierMixin, build_model

# Importing the definitions registers them.
from models import mobilenet, resnet, small_resnet  # noqa: E402,F401  isort: skip

__all__ = ["MODELS", "ClassifierMixin", "build_model"]
