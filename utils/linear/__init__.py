"""Linear probing of a frozen backbone: feature extraction (torch or ONNX Runtime), the content-keyed feature
cache, and the probe solvers (`utils.linear.solvers`).
"""
from utils.linear.backends import BACKENDS, BatchFn, build_backend
from utils.linear.features import (
                                   FeatureSet,
                                   cache_key,
                                   cached_features,
                                   describe_split,
                                   entry_dir,
                                   extract_features,
                                   read_entry,
)
from utils.linear.solvers import SOLVERS, LinearClassifier, LinearProbeConfig, SolverSettings, fit_sgd_epochs, score

__all__ = ["BACKENDS", "BatchFn", "FeatureSet", "LinearClassifier", "LinearProbeConfig", "SOLVERS", "SolverSettings",
           "build_backend", "cache_key", "cached_features", "describe_split", "entry_dir", "extract_features",
           "fit_sgd_epochs", "read_entry", "score"]
