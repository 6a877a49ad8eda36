"""SparseML's command lines on this project's runs (classification: `utils.sparseml.cli`, YOLOv5:
`utils.sparseml.yolov5`); the recipe manager for your own loop is `policies.recipe.manager.RecipeManager`, and
SparseML's model files load through the `sparseml_*` flavours."""
from utils.sparseml import cli, yolov5
from utils.sparseml.cli import main_py_command, translate

# command words -> (the program name SparseML users know, the translation of its flags into run options)
COMMANDS = {("image_classification.train",): ("sparseml.image_classification.train", cli.translate),
            ("pytorch_vision", "train"): ("scripts/pytorch_vision.py train", cli.translate),
            ("yolov5", "train"): ("sparseml.yolov5.train", yolov5.translate)}
# command words -> (program name, the translation of its flags into a utils.deploy export)
EXPORTS = {("image_classification.export_onnx",): ("sparseml.image_classification.export_onnx", cli.export_options),
           ("pytorch_vision", "export"): ("scripts/pytorch_vision.py export", cli.export_options),
           ("yolov5", "export"): ("export.py", yolov5.export_options),
           ("yolov5", "export_onnx"): ("sparseml.yolov5.export_onnx", yolov5.export_options)}

__all__ = ["COMMANDS", "EXPORTS", "main_py_command", "translate"]
