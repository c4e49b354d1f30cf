"""fcos_plugin: FCOS with an EfficientNet backbone for the OpenMMLab stack.

Importing this package registers everything into mmdet's registries (configs load it with
``custom_imports = dict(imports=['fcos_plugin'], allow_failed_imports=False)``) and applies the
small torch-2.14 compatibility fixes in :mod:`fcos_plugin.compat`.
"""
from . import (  # noqa: F401
    compat,  # noqa: F401  (first: fixes must be in place before anything runs)
    datasets,
    engine,
    evaluation,
    models,
    quantization,
)

__version__ = '0.1.0'
