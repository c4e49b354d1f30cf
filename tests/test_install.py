"""The environment tools/install.sh builds is the one requirements/pinned.txt describes.

CI once failed because pip, resolving torch's ``setuptools>=77.0.3``, upgraded setuptools past 81, which
has no ``pkg_resources``; mmengine's Config imports it for every ``mmdet::`` base config, so no config of
ours loaded. These tests name that failure directly instead of through 30 broken tool runs."""
from __future__ import annotations

import os
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


def _install_sh_versions() -> dict[str, str]:
    """TORCH_VERSION=..., TORCHVISION_VERSION=..., MMCV_VERSION=... and the mmdeploy pin of install.sh."""
    import re
    with open(osp.join(REPO, 'tools', 'install.sh')) as f:
        text = f.read()
    found = dict(re.findall(r'^(TORCH_VERSION|TORCHVISION_VERSION|MMCV_VERSION)=(\S+)$', text, re.M))
    found['MMDEPLOY_VERSION'] = re.search(r'"mmdeploy==([\d.]+)"', text).group(1)
    return found


def test_torch_torchvision_mmcv_mmdeploy_are_the_versions_install_sh_installs():
    want = _install_sh_versions()
    have = {'TORCH_VERSION': version('torch'), 'TORCHVISION_VERSION': version('torchvision'),
            'MMCV_VERSION': version('mmcv'), 'MMDEPLOY_VERSION': version('mmdeploy')}
    assert {k: v.split('+')[0] for k, v in have.items()} == want


def test_mmcv_has_its_compiled_ops_and_they_compute():
    """mmcv built from source with MMCV_WITH_OPS=1: its NMS kernel loads and agrees with torchvision's."""
    import torch
    import torchvision
    from mmcv.ops import nms
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 5 + torch.rand(200, 2, generator=g) * 30], 1)
    scores = torch.rand(200, generator=g)
    _, keep = nms(boxes, scores, 0.5)
    assert torch.equal(keep, torchvision.ops.nms(boxes, scores, 0.5))


def test_built_package_carries_its_configs(tmp_path):
    """A non-editable install (a wheel, as `pip install .` builds) finds the deploy configs the export
    tools default to and the model configs (``fcos_plugin.paths.config_path``) without the source tree."""
    import shutil
    import subprocess
    import sys
    import textwrap
    src = tmp_path / 'src'  # a copy: the build writes fcos_plugin/.mim, which must not land in the checkout
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns('.venv', '.git', 'work_dirs', 'data', '.mim',
                                                            '__pycache__', '*.egg-info', 'build'))
    wheels = tmp_path / 'wheels'
    proc = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q',
                           '-w', str(wheels), str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    site = tmp_path / 'site'
    proc = subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-deps', '-q', '--target', str(site),
                           *map(str, wheels.glob('fcos_plugin-*.whl'))], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    user = tmp_path / 'user'
    user.mkdir()
    code = textwrap.dedent(f'''
        import os.path as osp
        import fcos_plugin
        from fcos_plugin.deploy import DEFAULT_DEPLOY_CFG, STATIC_DEPLOY_CFG, load_deploy_cfg
        from fcos_plugin.paths import config_path
        from mmengine.config import Config
        assert fcos_plugin.__file__.startswith({str(site)!r}), fcos_plugin.__file__
        assert DEFAULT_DEPLOY_CFG.startswith({str(site)!r}) and osp.isfile(STATIC_DEPLOY_CFG)
        load_deploy_cfg()
        cfg = Config.fromfile(config_path('fcos_effb0_demo.py'))  # with its _base_ chain
        assert config_path().startswith({str(site)!r})
        assert cfg.model.backbone.type.endswith('EffNet') and cfg.model.bbox_head.num_classes == 6
        print('ok', DEFAULT_DEPLOY_CFG)
        ''')
    env = dict(os.environ, PYTHONPATH=str(site))
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=user, env=env)
    assert proc.returncode == 0 and 'ok' in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
