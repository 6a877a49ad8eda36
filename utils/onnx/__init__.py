"""ONNX inference beyond the installed runtimes: the sparse engine (compiled kernels that skip zero weights).

Importing this package registers engine 'sparse' in utils.onnx.engines.ENGINES (a plug-in, as models/ registers its
architectures); utils.deploy and the linear feature backends import it, so every place that picks an engine sees it.
"""
from utils.onnx.engine import SparseEngine

__all__ = ["SparseEngine"]
