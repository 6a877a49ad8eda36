"""The recipe's `eval(...)` expressions: a whitelisted arithmetic evaluator over the `ast`, never Python's eval.

Allowed: int/float literals, recipe variable names, `+ - * / // ** %`, unary `-`/`+`, parentheses and calls
to `abs float int min max round` with positional arguments. Anything else (attribute access, subscripts,
other calls, strings, lambdas, comprehensions, keyword arguments...) is rejected with the offending piece named.
"""
from __future__ import annotations

import ast
import math
import operator
import re
from typing import Any, Callable, Mapping

from utils.errors import UserError
from utils.registry import unknown_name_message

EVAL_PATTERN = re.compile(r"^\s*eval\((?P<body>.*)\)\s*$", re.DOTALL)
MAX_EXPRESSION_CHARS = 500
MAX_POWER_EXPONENT = 64        # no 9**9**9: recipes never need huge powers
MAX_MAGNITUDE = 1e15

BINARY_OPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Pow: operator.pow, ast.Mod: operator.mod,
}
UNARY_OPS: dict[type, Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
FUNCTIONS: dict[str, Callable[..., Any]] = {"abs": abs, "float": float, "int": int, "min": min, "max": max,
                                            "round": round}


def expression_body(value: Any) -> str | None:
    """The text inside `eval(...)`, or None when `value` is not an eval string."""
    if not isinstance(value, str):
        return None
    match = EVAL_PATTERN.match(value)
    return match.group("body") if match else None


def free_names(expr: str, *, source: str) -> set[str]:
    """Variable names an expression refers to (function names excluded); rejects bad syntax."""
    tree = _parse(expr, source=source)
    calls = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and id(n) not in calls}


def evaluate_expression(expr: str, variables: Mapping[str, Any], *, source: str) -> Any:
    """Evaluate one whitelisted expression; a bare variable name returns its value unchanged (lists too)."""
    tree = _parse(expr, source=source)
    if isinstance(tree.body, ast.Name):
        return _lookup(tree.body.id, variables, source=source, expr=expr)
    return _Evaluator(variables, source=source, expr=expr).visit(tree.body)


def _parse(expr: str, *, source: str) -> ast.Expression:
    if len(expr) > MAX_EXPRESSION_CHARS:
        raise UserError(f"{source}: expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        return ast.parse(expr.strip(), mode="eval")
    except SyntaxError as err:
        raise UserError(f"{source}: invalid expression eval({expr}): {err.msg}") from None


def _lookup(name: str, variables: Mapping[str, Any], *, source: str, expr: str) -> Any:
    if name not in variables:
        raise UserError(f"{source}: in eval({expr}): " + unknown_name_message(
            "variable", name, sorted(variables),
            none=f"the recipe defines no variables (define it at the recipe's top level, e.g. '{name}: 10')"))
    return variables[name]


class _Evaluator:
    """Walks the tree; every node type not handled here is refused."""

    def __init__(self, variables: Mapping[str, Any], *, source: str, expr: str):
        self.variables = variables
        self.source = source
        self.expr = expr

    def fail(self, what: str) -> UserError:
        allowed = "numbers, variables, + - * / // ** %, unary -, and " + ", ".join(sorted(FUNCTIONS))
        return UserError(f"{self.source}: eval({self.expr}): {what} is not allowed (allowed: {allowed})")

    def visit(self, node: ast.AST) -> Any:
        handler = getattr(self, f"visit_{type(node).__name__}", None)
        if handler is None:
            raise self.fail(f"{type(node).__name__} ({ast.unparse(node)!r})")
        return handler(node)

    def visit_Constant(self, node: ast.Constant) -> Any:
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise self.fail(f"the literal {node.value!r}")
        return node.value

    def visit_Name(self, node: ast.Name) -> Any:
        value = _lookup(node.id, self.variables, source=self.source, expr=self.expr)
        return self.number(value, f"variable {node.id!r}")

    def visit_BinOp(self, node: ast.BinOp) -> Any:
        op = BINARY_OPS.get(type(node.op))
        if op is None:
            raise self.fail(f"the operator {type(node.op).__name__}")
        left, right = self.visit(node.left), self.visit(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_POWER_EXPONENT:
            raise self.fail(f"an exponent of {right} (at most {MAX_POWER_EXPONENT})")
        try:
            result = op(left, right)
        except (ZeroDivisionError, OverflowError, ValueError) as err:
            raise UserError(f"{self.source}: eval({self.expr}): {err}") from None
        return self.number(result, "the result")

    def visit_UnaryOp(self, node: ast.UnaryOp) -> Any:
        op = UNARY_OPS.get(type(node.op))
        if op is None:
            raise self.fail(f"the operator {type(node.op).__name__}")
        return op(self.visit(node.operand))

    def visit_Call(self, node: ast.Call) -> Any:
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            raise self.fail(f"calling {ast.unparse(node.func)!r}")
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise self.fail(f"keyword or starred arguments in {ast.unparse(node)!r}")
        args = [self.visit(a) for a in node.args]
        try:
            return self.number(FUNCTIONS[node.func.id](*args), "the result")
        except (TypeError, ValueError, OverflowError) as err:
            raise UserError(f"{self.source}: eval({self.expr}): {node.func.id}(): {err}") from None

    def number(self, value: Any, what: str) -> int | float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{self.source}: eval({self.expr}): {what} is {value!r}, not a number")
        if isinstance(value, float) and not math.isfinite(value) or abs(value) > MAX_MAGNITUDE:
            raise UserError(f"{self.source}: eval({self.expr}): {what} {value!r} is out of range")
        return value
