"""Harmless upstream warnings that bury a run's progress, silenced by the project's tools at start-up.

Not applied on import: each tool in ``tools/`` calls :func:`quiet_upstream_warnings` once, in its own
process; importing ``fcos_plugin`` leaves ``warnings`` as it was.
"""
from __future__ import annotations

import warnings

__all__ = ['HARMLESS_WARNINGS', 'quiet_upstream_warnings']

#: Exact messages (regular expressions), each harmless here:
#: ``pkg_resources`` deprecation (mmengine 0.10.7 imports it; setuptools < 81 is pinned on purpose);
#: ``torch.meshgrid`` without ``indexing`` (mmdet 3.3.0's point generators rely on the default 'ij');
#: mmengine's ``LocalVisBackend`` without ``save_dir`` (a visualizer used for drawing only);
#: "bbox/polygon is out of bounds" (mmengine's drawing clips them; predictions may reach past the image).
HARMLESS_WARNINGS = (
    r'pkg_resources is deprecated as an API',
    r'torch\.meshgrid: in an upcoming release, it will be required to pass the indexing argument',
    r'Failed to add <class \'mmengine\.visualization\.vis_backend\.LocalVisBackend\'>',
    r'.*The (bbox|polygon) is out of bounds, the drawn (bbox|polygon) may not be in the image',
)


def quiet_upstream_warnings() -> None:
    """Ignore exactly the :data:`HARMLESS_WARNINGS` in this process; every other warning still shows."""
    for message in HARMLESS_WARNINGS:
        warnings.filterwarnings('ignore', message=message)
