"""What every deployment step shares: the user-error type, the names of the files an export writes, the
registry scope, and the "exists unless --force" rule for outputs."""
from __future__ import annotations

from collections.abc import Callable, Sequence

from ..utils import refuse_existing

__all__ = ['DEPLOY_CFG_FILE', 'DeployError', 'Log', 'META_FILE', 'SDK_FILES', 'ensure_free', 'init_scope']

#: Files mmdeploy's ``export2SDK`` writes next to the model.
SDK_FILES = ('deploy.json', 'pipeline.json', 'detail.json')
#: Ours, next to them: class names and shapes of the export, and the deploy config it used.
META_FILE = 'export_meta.json'
DEPLOY_CFG_FILE = 'deploy_cfg.py'

Log = Callable[[str], None]


class DeployError(Exception):
    """Bad input to an export/evaluation/quantization step (the message is for the user: it names the
    file and what to do; the tools print it without a traceback)."""


def init_scope() -> None:
    """Register fcos_plugin and mmdet modules and make ``mmdet`` the default registry scope."""
    from mmdet.utils import register_all_modules

    import fcos_plugin  # noqa: F401  (registers the plugin)
    register_all_modules(init_default_scope=True)


def ensure_free(paths: Sequence[str], force: bool) -> None:
    """Raise :class:`DeployError` naming the ``paths`` that exist, unless ``force``."""
    refuse_existing(paths, force, DeployError)
