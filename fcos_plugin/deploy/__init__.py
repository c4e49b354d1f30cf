"""Deployment to ONNX Runtime through mmdeploy (needs mmdeploy; kept out of ``fcos_plugin/__init__`` so
that training and testing never import it). One module per job, as mmdeploy keeps its ``apis/``:

=================  ====================================================================================
``configs``        model and deploy configs loaded and checked (:func:`load_model_cfg`,
                   :func:`load_deploy_cfg`, :func:`deploy_cfg_for`); ``DEPLOY_BACKENDS``, the table
                   of supported backends (ONNX Runtime)
``checks``         checkpoint, ONNX model and input-size checks (:func:`check_checkpoint`,
                   :func:`check_onnx_model`, :func:`check_input_shape`), and
                   ``prepare_exported_model``, what every step on an exported model starts with
``pytorch2onnx``   :func:`export_onnx`: the model built once, mmdeploy's export + ``export2SDK``
``quantization``   :func:`quantize_int8`: ONNX Runtime static int8 of the network, calibrated on the train set
``inspection``     what ONNX Runtime runs: int8 vs float convolution kernels, time per operator type
``evaluation``     :func:`evaluate`, latency of ONNX and PyTorch models
``data``           the test pipeline for a static input, train/val dataloaders for the above
``rewriters``      mmdeploy rewriters: the TorchScript exporter, in-graph "SAME" padding, the plugin's
                   head (registered on import)
``common``         :class:`DeployError`, the exported file names, ``--force`` handling
=================  ====================================================================================

Importing this package registers the rewriters in mmdeploy's ``FUNCTION_REWRITER``; they act only
inside mmdeploy's export, nowhere else. It also adds :data:`fcos_plugin.engine.SAFE_CHECKPOINT_GLOBALS`
(``HistoryBuffer``, numpy's array/scalar reconstruction, the ``getattr`` answer for HistoryBuffer's four
statistics methods) to torch's weights-only allow-list for the rest of the process -- the one fix that
must outlive a ``with`` block: mmdeploy's own ``torch2onnx`` / ``tools/deploy.py`` import this package
through the deploy configs' ``codebase_config.module`` and then load the checkpoint with mmengine, with no
point where a block could be opened, and without the entries no mmengine checkpoint loads on torch 2.14
(``tests/test_deploy/test_export_onnx.py::test_mmdeploys_own_api_gets_the_plugin_rewriters``). The entries
build data only; anything else a checkpoint names stays refused. ``import fcos_plugin`` alone adds nothing.
"""
import torch as _torch

from ..engine.checkpoint_loading import SAFE_CHECKPOINT_GLOBALS as _SAFE_CHECKPOINT_GLOBALS
from .checks import check_checkpoint, check_input_shape, check_onnx_model, onnx_input_dims
from .common import DeployError, ensure_free, init_scope
from .configs import DEFAULT_DEPLOY_CFG, STATIC_DEPLOY_CFG, deploy_cfg_for, load_deploy_cfg, load_model_cfg
from .data import build_dataloader
from .evaluation import evaluate, latency_input, median_latency_ms, onnx_latency_ms, ort_session
from .pytorch2onnx import export_onnx
from .quantization import CALIBRATION_METHODS, network_nodes, quantize_int8
from .rewriters import EXPORT_CFG_KEY, check_exportable_test_cfg

_torch.serialization.add_safe_globals(_SAFE_CHECKPOINT_GLOBALS)

__all__ = [
    'build_dataloader', 'CALIBRATION_METHODS', 'check_checkpoint', 'check_exportable_test_cfg',
    'check_input_shape', 'check_onnx_model', 'DEFAULT_DEPLOY_CFG', 'deploy_cfg_for', 'DeployError',
    'ensure_free', 'evaluate', 'EXPORT_CFG_KEY', 'export_onnx', 'init_scope', 'latency_input',
    'load_deploy_cfg', 'load_model_cfg', 'median_latency_ms', 'network_nodes', 'onnx_input_dims',
    'onnx_latency_ms', 'ort_session', 'quantize_int8', 'STATIC_DEPLOY_CFG'
]
