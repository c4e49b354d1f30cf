"""fcos_plugin: FCOS with an EfficientNet backbone for the OpenMMLab stack.

Importing this package registers everything into mmdet's registries (configs load it with
``custom_imports = dict(imports=['fcos_plugin'], allow_failed_imports=False)``) and changes nothing
else: the fixes this stack needs on torch 2.14 are registered components that configs select
(:class:`fcos_plugin.engine.CompatRunner`, :class:`fcos_plugin.engine.AtomicCheckpointHook`, ...) or
start-up steps of the project's own tools (see ``docs/en/architecture.md``).
"""
from . import (  # noqa: F401
    datasets,
    engine,
    evaluation,
    models,
    quantization,
)

__version__ = '0.1.0'
