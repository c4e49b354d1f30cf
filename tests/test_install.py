"""The environment tools/install.sh builds is the one requirements/pinned.txt describes.

CI once failed because pip, resolving torch's ``setuptools>=77.0.3``, upgraded setuptools past 81, which
has no ``pkg_resources``; mmengine's Config imports it for every ``mmdet::`` base config, so no config of
ours loaded. These tests name that failure directly instead of through 30 broken tool runs."""
from __future__ import annotations

import os.path as osp
from importlib.metadata import PackageNotFoundError, version

from packaging.requirements import Requirement

from tests.conftest import REPO


def _pinned() -> list[Requirement]:
    reqs = []
    with open(osp.join(REPO, 'requirements', 'pinned.txt')) as f:
        for line in f:
            line = line.split('#')[0].strip()
            if line:
                reqs.append(Requirement(line))
    return reqs


def test_every_pinned_requirement_is_installed_at_its_pinned_version():
    wrong = []
    for req in _pinned():
        try:
            have = version(req.name)
        except PackageNotFoundError:
            wrong.append(f'{req}: not installed')
            continue
        if not req.specifier.contains(have, prereleases=True):
            wrong.append(f'{req}: have {have}')
    assert not wrong, 'environment differs from requirements/pinned.txt (rerun bash tools/install.sh): ' \
        + '; '.join(wrong)


def test_configs_inheriting_from_mmdet_load(tmp_path):
    """``mmdet::`` bases go through mmengine's ``is_installed``, which needs ``pkg_resources``."""
    from mmengine.config import Config
    cfg_file = tmp_path / 'child.py'
    cfg_file.write_text("_base_ = 'mmdet::_base_/default_runtime.py'\nextra = 1\n")
    cfg = Config.fromfile(str(cfg_file))
    assert cfg.default_scope == 'mmdet' and cfg.extra == 1
