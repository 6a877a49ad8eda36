"""SparseML's command lines on this project's runs (see `utils.sparseml.cli`); the recipe manager for your own
loop is `policies.recipe_manager.RecipeManager`, SparseML's model files load through the `sparseml_*` flavours."""
from utils.sparseml.cli import COMMANDS, main_py_command, translate

__all__ = ["COMMANDS", "main_py_command", "translate"]
