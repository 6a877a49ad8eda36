"""Deployment: ONNX export (fp32 and INT8 QDQ), ONNX Runtime checks, compressed sparse checkpoints.

From the shell: `python -m utils.deploy RUN_DIR/model.pt`. The engines that run the ONNX files (onnxruntime,
openvino, sparse, deepsparse when installed) are one registry: utils.onnx.engines.
"""
import utils.onnx  # noqa: F401 -- registers engine 'sparse' (compiled kernels that skip zero weights)
from utils.deploy.compress import COMPRESSED_FORMAT, compress_state_dict, compressed_size_report, decompress_state_dict
from utils.deploy.export import add_latency_, deploy_checkpoint, describe_deployment, export_checkpoint
from utils.deploy.onnx import compare_with_torch, export_onnx, fold_quantized_weights_, onnx_latency_ms, onnx_session
from utils.onnx.engines import ENGINES, available_engines, engines_latency_ms, load_engine, missing

__all__ = ["COMPRESSED_FORMAT", "ENGINES", "add_latency_", "available_engines", "compare_with_torch",
           "compress_state_dict", "compressed_size_report", "decompress_state_dict", "deploy_checkpoint",
           "describe_deployment", "engines_latency_ms", "export_checkpoint", "export_onnx", "fold_quantized_weights_",
           "load_engine", "missing", "onnx_latency_ms", "onnx_session"]
