"""fcos_plugin: FCOS with an EfficientNet-B0 backbone for MMDetection.

As mmdet does with ``mmdet/.mim``, a built package (wheel, ``pip install .``) carries the configs inside
``fcos_plugin/.mim/configs``, so the deploy configs the export tools default to and every model config
(``fcos_plugin.paths.config_path('fcos_effb0.py')``) resolve without the source tree. An editable install
reads them from the checkout and copies nothing.
"""
import os
import os.path as osp
import shutil
import sys

from setuptools import find_packages, setup

ROOT = osp.dirname(osp.abspath(__file__))


def add_mim_extension() -> None:
    """Copy ``configs/`` to ``fcos_plugin/.mim/configs`` for builds that are not editable."""
    editable = any(cmd in sys.argv for cmd in ('develop', 'editable_wheel'))
    target = osp.join(ROOT, 'fcos_plugin', '.mim', 'configs')
    if editable or not any(cmd in sys.argv for cmd in ('bdist_wheel', 'sdist', 'install', 'build',
                                                       'build_py')):
        return
    if osp.isdir(target):
        shutil.rmtree(target)
    shutil.copytree(osp.join(ROOT, 'configs'), target,
                    ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))


def mim_files() -> list:
    base = osp.join(ROOT, 'fcos_plugin')
    return [osp.relpath(osp.join(d, f), base) for d, _, files in os.walk(osp.join(base, '.mim'))
            for f in files if f.endswith('.py')]


add_mim_extension()
setup(
    name='fcos_plugin',
    version='0.1.0',
    description='FCOS with an EfficientNet-B0 backbone for MMDetection: LMDB COCO, '
    'BiFPN, tuned FCOS head, MMDeploy ONNX export',
    packages=find_packages(include=['fcos_plugin', 'fcos_plugin.*']),
    package_data={'fcos_plugin': mim_files()},
    license='Apache License 2.0',
    classifiers=[
        'License :: OSI Approved :: Apache Software License',
        'Operating System :: POSIX :: Linux',
        'Programming Language :: Python :: 3',
        'Programming Language :: Python :: 3.11',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
    # 3.11 is what the stack was measured on (tools/install.sh uses python3.11 unless PYTHON says otherwise)
    python_requires='>=3.11',
    # The stack is pinned in requirements/pinned.txt and installed by tools/install.sh:
    # mmcv must be compiled against the exact torch in the environment.
    install_requires=[],
)
