"""rl-zoo3's Python-expression strings in YAML files, read without ``eval``.

rl-zoo3 passes strings such as ``policy_kwargs: "dict(net_arch=[256, 256], activation_fn=nn.ReLU)"`` to Python's
``eval``. rlgen reads the same strings with a small interpreter over the expression's syntax tree that knows only
literals (numbers, strings, booleans, None), lists, tuples, ``{...}`` mappings, ``dict(...)``/``list(...)``/
``tuple(...)`` calls and attributes of ``torch`` (``nn.ReLU``, ``th.nn.Tanh``, ``torch.optim.Adam``); anything else
is an error naming the key, the file and what is accepted, never silently run or dropped.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

#: Keys whose string values rl-zoo3 evaluates as Python.
EVALUATED_KEYS = ("policy_kwargs", "replay_buffer_kwargs", "normalize", "env_kwargs")
#: The names an expression may start an attribute chain with, and the module each stands for.
ROOTS = {"nn": "torch.nn", "th": "torch", "torch": "torch"}
CALLS = {"dict": dict, "list": list, "tuple": tuple}
ACCEPTED = "numbers, strings, True/False/None, [lists], (tuples), {mappings}, dict(...), and torch classes (nn.ReLU)"


class ExpressionError(ValueError):
    """A string that is not one of the accepted expressions."""


def evaluate_string(text: str, key: str, source: str | Path | None = None) -> Any:
    """The value of rl-zoo3's expression ``text`` (the value of ``key`` in ``source``)."""
    where = f" in {source}" if source else ""
    try:
        tree = ast.parse(text.strip(), mode="eval")
        return _value(tree.body)
    except (SyntaxError, ExpressionError) as exc:
        detail = exc.msg if isinstance(exc, SyntaxError) else str(exc)
        raise ValueError(f"{key}{where}: cannot read {text!r} ({detail}); rlgen reads {ACCEPTED}") from None


def _value(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool, type(None))):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _value(node.operand)
        if isinstance(operand, (int, float)) and not isinstance(operand, bool):
            return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.List):
        return [_value(e) for e in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_value(e) for e in node.elts)
    if isinstance(node, ast.Dict) and None not in node.keys:
        return {_value(k): _value(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in CALLS:
        if any(k.arg is None for k in node.keywords) or any(isinstance(a, ast.Starred) for a in node.args):
            raise ExpressionError("** and * unpacking are not read")
        args = [_value(a) for a in node.args]
        return CALLS[node.func.id](*args, **{k.arg: _value(k.value) for k in node.keywords})
    if isinstance(node, ast.Attribute):
        return _torch_attribute(node)
    raise ExpressionError(f"{ast.unparse(node)!r} is not allowed")


def _torch_attribute(node: ast.Attribute) -> Any:
    """``nn.ReLU`` -> ``torch.nn.ReLU``: an attribute chain from one of :data:`ROOTS` that ends in a class."""
    parts: list[str] = []
    current: ast.AST = node
    while isinstance(current, ast.Attribute):
        parts.insert(0, current.attr)
        current = current.value
    if not isinstance(current, ast.Name) or current.id not in ROOTS or any(p.startswith("_") for p in parts):
        raise ExpressionError(f"{ast.unparse(node)!r} is not a torch class (write nn.ReLU or torch.nn.ReLU)")
    import importlib

    obj: Any = importlib.import_module(ROOTS[current.id])
    for part in parts:
        if not hasattr(obj, part):
            raise ExpressionError(f"{ast.unparse(node)!r} does not exist")
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise ExpressionError(f"{ast.unparse(node)!r} is not a class")
    return obj
