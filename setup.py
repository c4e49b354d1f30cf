from setuptools import find_packages, setup

setup(
    name='fcos_plugin',
    version='0.1.0',
    description='FCOS with an EfficientNet-B0 backbone for MMDetection: LMDB COCO, '
    'BiFPN, tuned FCOS head, MMDeploy ONNX export',
    packages=find_packages(include=['fcos_plugin', 'fcos_plugin.*']),
    python_requires='>=3.10',
    # The stack is pinned in requirements/pinned.txt and installed by tools/install.sh:
    # mmcv must be compiled against the exact torch in the environment.
    install_requires=[],
)
