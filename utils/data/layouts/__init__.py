"""Dataset layouts, one module per family; importing this package registers every layout in `LAYOUTS`."""
from utils.data.layouts.base import (
                                     IMG_EXTENSIONS,
                                     LAYOUTS,
                                     FileSamples,
                                     Layout,
                                     RawSplits,
                                     Samples,
                                     TensorSamples,
                                     register_layout,
)

# Importing the families registers them.
from utils.data.layouts import files, memory, shapes  # noqa: E402,F401  isort: skip

__all__ = ["IMG_EXTENSIONS", "LAYOUTS", "FileSamples", "Layout", "RawSplits", "Samples", "TensorSamples",
           "register_layout"]
