"""Config mistakes said in one line by the tools (``tools/train.py``, ``tools/test.py``), before or while
MMEngine's Runner builds what the config describes. No registry, nothing of mmengine patched: the tools call
these helpers at start-up and around the Runner.

* :func:`check_cfg_option_keys` -- a ``--cfg-options`` key whose top-level part the config does not have
  and the Runner does not read (``train_cfgs.max_iters=2``) would be merged as a new key and ignored: named
  and refused; so is a variable of the config file (``max_iters=2``), whose value was copied where the
  file used it before the option arrives: the settings to change instead are named.
* :func:`explain_build_error` -- what mmengine raises when it builds a config: an unregistered ``type``
  (``KeyError: EffNetX is not in the mmdet::model registry``, which does not say where in the config it is)
  and an argument the class does not take (``TypeError: ... got an unexpected keyword argument``), turned
  into one line naming the config path (``model.backbone.type='EffNetX'``) and a close registered name.
* :func:`num_classes_problem` -- a head's ``num_classes`` that disagrees with the dataset's classes.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = ['ConfigError', 'RUNNER_KEYS', 'check_cfg_option_keys', 'config_errors_explained',
           'explain_build_error', 'num_classes_problem']


class ConfigError(ValueError):
    """A config (or ``--cfg-options``) mistake, said in one line (message for the user)."""


#: Top-level keys that mmengine's ``Runner`` (0.10.7: ``from_cfg``, ``__init__``, ``train``) or this
#: plugin's tools read, whether or not a config sets them: ``--cfg-options`` may add them.
RUNNER_KEYS = frozenset({
    'model', 'work_dir', 'train_dataloader', 'val_dataloader', 'test_dataloader', 'train_cfg', 'val_cfg',
    'test_cfg', 'auto_scale_lr', 'optim_wrapper', 'param_scheduler', 'val_evaluator', 'test_evaluator',
    'default_hooks', 'custom_hooks', 'data_preprocessor', 'load_from', 'resume', 'launcher', 'env_cfg',
    'log_processor', 'log_level', 'visualizer', 'default_scope', 'randomness', 'experiment_name',
    'model_wrapper_cfg', 'find_unused_parameters', 'sync_bn', 'compile', 'custom_imports', 'runner_type',
    'backend_args', 'tta_model', 'tta_pipeline', 'functional_cfg'})


def check_cfg_option_keys(cfg, options: Mapping[str, Any] | None) -> None:
    """Refuse ``--cfg-options`` keys whose top-level part is neither in ``cfg`` nor read by the Runner.

    ``Config.merge_from_dict`` would add such a key, nothing would read it, and the run would go on with
    the setting the user meant to change (``train_cfgs.max_iters=2`` trained all 600 iterations).
    Call it before merging.

    Raises:
        ConfigError: naming every such key, with the closest existing top-level key.
    """
    known = set(cfg.keys()) | RUNNER_KEYS
    bad = []
    for key in options or {}:
        top = key.split('.', 1)[0]
        if top not in known:
            close = difflib.get_close_matches(top, sorted(known), n=1, cutoff=0.6)
            bad.append(f'{key!r} (the config has no top-level key {top!r}'
                       + (f'; did you mean {close[0]!r}?)' if close else ')'))
    if bad:
        raise ConfigError(f'--cfg-options: unknown key{"s" if len(bad) > 1 else ""} {"; ".join(bad)}. '
                          'Nothing would read it: fix the key (the config\'s keys: python -c "from mmengine '
                          'import Config; print(Config.fromfile(CONFIG).pretty_text)")')
    for key in options or {}:
        top = key.split('.', 1)[0]
        if key == top and top in cfg and top not in RUNNER_KEYS and not isinstance(cfg[top], (Mapping, list)):
            raise ConfigError(_variable_message(cfg, top))


def _variable_message(cfg, name: str) -> str:
    """Why ``--cfg-options NAME=...`` changes nothing for a plain top-level value of the config file (a
    variable such as ``max_iters = 600``) and which settings to set instead."""
    value = cfg[name]
    uses = [f'{path}.{k}' for path, node in _walk({k: v for k, v in cfg.items() if k != name})
            for k, v in node.items() if not isinstance(v, (Mapping, list)) and v == value
            and type(v) is type(value)]
    where = (f'; the file used it for {", ".join(uses[:4])}{", ..." if len(uses) > 4 else ""}: set '
             f'{"those" if len(uses) > 1 else "that"} instead (e.g. {uses[0]}=...)') if uses else ''
    return (f'--cfg-options: {name!r} is a variable of the config file; its value ({value!r}) was copied '
            f'where the file uses it when the file was read, so changing it now changes nothing{where}.')


def _walk(node: Any, path: str = '') -> Iterator[tuple[str, dict]]:
    """Every dict in a config tree with its dotted path (list items by index, as ``--cfg-options``)."""
    if isinstance(node, Mapping):
        yield path, node  # type: ignore[misc]
        for key, value in node.items():
            yield from _walk(value, f'{path}.{key}' if path else str(key))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _walk(value, f'{path}.{i}' if path else str(i))


def _registry(scope: str | None, name: str):
    """The registry ``scope::name`` (e.g. mmdet's ``MODELS`` for ``mmdet::model``), or None."""
    from mmengine.registry import Registry
    for package in (scope, 'mmdet', 'mmengine'):
        if not package:
            continue
        try:
            module = importlib.import_module(f'{package}.registry')
        except ImportError:
            continue
        for value in vars(module).values():  # (mmdet.registry also holds mmengine's, as MMENGINE_*)
            if isinstance(value, Registry) and value.name == name and value.scope == package:
                return value
    return None


def _registered_names(registry) -> list[str]:
    names: set[str] = set()
    while registry is not None:
        names.update(registry.module_dict)
        registry = registry.parent
    return sorted(names)


def _find_class(name: str):
    """A class registered under ``name`` in any of mmdet's or mmengine's registries, or None."""
    from mmengine.registry import Registry
    for package in ('mmdet', 'mmengine'):
        try:
            module = importlib.import_module(f'{package}.registry')
        except ImportError:
            continue
        for value in vars(module).values():
            if isinstance(value, Registry):
                found = value.module_dict.get(name)
                if inspect.isclass(found):
                    return found
    return None


def _where(cfg) -> str:
    filename = getattr(cfg, 'filename', None)
    return f' (config {filename})' if filename else ''


def _shown(paths: Sequence[str]) -> str:
    return ', '.join(paths[:3]) + (f' and {len(paths) - 3} more' if len(paths) > 3 else '')


_NOT_REGISTERED = re.compile(r"([\w.:-]+) is not in the (?:([\w.]+)::)?([\w. ]+?) registry")
_UNEXPECTED_KWARG = re.compile(r"(\w+)\.__init__\(\) got an unexpected keyword argument '(\w+)'")
#: a key that belongs to the other kind of loop (epoch- vs iteration-based)
_OTHER_LOOP = {'max_epochs': 'max_iters', 'max_iters': 'max_epochs'}


def explain_build_error(error: BaseException, cfg) -> str | None:
    """One line for an error mmengine raised while building ``cfg``, or None when it is not a config
    mistake this recognises (the caller re-raises it then).

    * ``KeyError: X is not in the SCOPE::NAME registry`` -> the config paths whose ``type`` is ``X``, the
      registry, and a close registered name;
    * ``TypeError: C.__init__() got an unexpected keyword argument 'k'`` -> the config paths of ``k`` in
      dicts of ``type`` ``C`` (or without a type, as ``train_cfg`` may be), and C's arguments.
    """
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    tree = cfg._cfg_dict.to_dict() if hasattr(cfg, '_cfg_dict') else dict(cfg)
    if isinstance(error, KeyError):
        match = _NOT_REGISTERED.search(text)
        if not match:
            return None
        obj_type, scope, name = match.groups()
        short = obj_type.split('.')[-1]
        paths = [f'{path}.type' for path, node in _walk(tree)
                 if isinstance(node.get('type'), str) and node['type'].split('.')[-1] == short]
        if not paths:
            return None
        registry = _registry(scope, name)
        close = difflib.get_close_matches(short, _registered_names(registry), n=3) if registry else []
        where = ', '.join(f'{p}={obj_type!r}' for p in paths[:3]) + (
            f' (and {len(paths) - 3} more)' if len(paths) > 3 else '')
        return (f'{where}{_where(cfg)} is not registered in {scope + "::" if scope else ""}{name}'
                + (f'; did you mean {" or ".join(repr(c) for c in close)}?' if close else '.')
                + ' Check the spelling, or import the module that registers it with custom_imports.')
    if isinstance(error, TypeError):
        match = _UNEXPECTED_KWARG.search(text)
        if not match:
            return None
        cls_name, arg = match.groups()
        typed = [path for path, node in _walk(tree)
                 if arg in node and isinstance(node.get('type'), str)
                 and node['type'].split('.')[-1] == cls_name]
        untyped = [path for path, node in _walk(tree) if arg in node and 'type' not in node and path]
        paths = [f'{p}.{arg}' for p in (typed or untyped)]
        if not paths:
            return None
        cls = _find_class(cls_name)
        accepted = []
        if cls is not None:
            try:
                accepted = [p.name for p in inspect.signature(cls.__init__).parameters.values()
                            if p.name not in ('self', 'runner', 'dataloader')
                            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
            except (TypeError, ValueError):
                accepted = []
        close = difflib.get_close_matches(arg, accepted, n=1)
        if not close and _OTHER_LOOP.get(arg) in accepted:
            close = [_OTHER_LOOP[arg]]
        return (f'{_shown(paths)}{_where(cfg)}: {cls_name} takes no argument {arg!r}'
                + (f'; did you mean {close[0]!r}?' if close else '')
                + (f' It takes: {", ".join(accepted)}.' if accepted else ''))
    return None


@contextmanager
def config_errors_explained(cfg) -> Iterator[None]:
    """Around ``Runner.from_cfg`` and ``runner.train()``/``test()`` (which build loops, datasets and
    transforms lazily): a ``KeyError``/``TypeError`` that :func:`explain_build_error` recognises becomes a
    :class:`ConfigError` with its one line; anything else passes unchanged."""
    try:
        yield
    except (KeyError, TypeError) as e:
        line = explain_build_error(e, cfg)
        if line is None:
            raise
        raise ConfigError(line) from None


def num_classes_problem(num_classes: int, classes: Sequence[str] | None, head: str = 'model.bbox_head',
                        source: str = 'the dataset', metainfo_hint: bool = True) -> str | None:
    """The one-line complaint when a head's ``num_classes`` disagrees with the dataset's ``classes``
    (``None`` when they agree or the classes are unknown); ``metainfo_hint``: also suggest listing the
    classes in the dataset's ``metainfo``."""
    if not classes or len(classes) == num_classes:
        return None
    names = ', '.join(map(str, list(classes)[:6])) + (', ...' if len(classes) > 6 else '')
    return (f'{head}.num_classes={num_classes} but {source} has {len(classes)} classes ({names}): set '
            f'{head}.num_classes={len(classes)} in the config'
            + (f' (or give the dataset metainfo=dict(classes=[...]) with the {num_classes} class names the '
               'model is meant for)' if metainfo_hint else ''))
