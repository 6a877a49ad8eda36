"""The recipe language: SparseML's YAML recipes read (`yaml_text`), their `eval(...)` expressions evaluated by a
whitelisted evaluator (`expressions`), variables resolved into a `Recipe` (`load`), and a recipe driven from a
user's own training loop (`manager.RecipeManager`). The modifiers a recipe names are policies (`policies.modifiers`).
"""
