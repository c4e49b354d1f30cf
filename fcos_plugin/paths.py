"""Where the project's configs are: the checkout's ``configs/`` (source tree, editable install), else the
copy a built package carries in ``fcos_plugin/.mim/configs`` (``pip install .``, a wheel), as mmdet does."""
from __future__ import annotations

import os.path as osp

_PACKAGE = osp.dirname(osp.abspath(__file__))


def config_dir() -> str:
    """The directory holding ``fcos_effb0.py``, ``_base_/`` and ``deploy/``."""
    source = osp.join(osp.dirname(_PACKAGE), 'configs')
    if osp.isfile(osp.join(source, 'fcos_effb0.py')):
        return source
    shipped = osp.join(_PACKAGE, '.mim', 'configs')
    if osp.isdir(shipped):
        return shipped
    raise FileNotFoundError(f'no configs next to {_PACKAGE} nor in {shipped}: reinstall fcos_plugin '
                            '(pip install . ships them) or run from the source checkout')


def config_path(*parts: str) -> str:
    """A config inside :func:`config_dir`, e.g. ``config_path('fcos_effb0.py')``."""
    return osp.join(config_dir(), *parts)
