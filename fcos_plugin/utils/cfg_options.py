"""``--cfg-options`` values written as ``dict(...)``, as configs write them.

mmengine's ``DictAction`` (0.10.7) parses numbers, booleans, strings and lists/tuples of them, but keeps
``dict(type='TensorboardVisBackend')`` as that string, so
``--cfg-options "visualizer.vis_backends=[dict(type='LocalVisBackend'),dict(type='TensorboardVisBackend')]"``
hands the visualizer two strings and the run dies with ``vis_backends must be a list of dicts``.
:func:`literal_dicts` turns such strings into dicts; nothing else is changed.
"""
from __future__ import annotations

import ast
from typing import Any

__all__ = ['literal_dicts']


def _value(node: ast.AST, text: str) -> Any:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == 'dict':
        if node.args or any(k.arg is None for k in node.keywords):
            raise ValueError(f'--cfg-options: only dict(key=value, ...) is understood, got {text!r}')
        return {k.arg: _value(k.value, text) for k in node.keywords}
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_value(e, text) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.Dict):
        return {_value(k, text): _value(v, text) for k, v in zip(node.keys, node.values)}
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise ValueError(f'--cfg-options: {ast.unparse(node)!r} in {text!r} is not a literal') from None


def _convert(value: Any) -> Any:
    if isinstance(value, list):
        return [_convert(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_convert(v) for v in value)
    if isinstance(value, str) and value.replace(' ', '').startswith('dict(') and value.endswith(')'):
        try:
            tree = ast.parse(value.strip(), mode='eval')
        except SyntaxError:
            raise ValueError(f'--cfg-options: cannot parse {value!r}') from None
        return _value(tree.body, value)
    return value


def literal_dicts(cfg_options: dict | None) -> dict | None:
    """``cfg_options`` (as ``DictAction`` left them) with every ``dict(k=v, ...)`` string, alone or
    inside a list/tuple, turned into a dict whose values are Python literals (nested ``dict(...)``
    included). Raises ``ValueError`` naming the text when such a string is not of that form."""
    if cfg_options is None:
        return None
    return {key: _convert(value) for key, value in cfg_options.items()}
