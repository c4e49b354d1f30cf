"""Static int8 quantization of an exported model with ONNX Runtime (as mmdeploy keeps calibration in
``apis/calibration.py``): every convolution quantized (QDQ), calibrated on the config's train images
through the test pipeline; everything after the convolutions stays float.
"""
from __future__ import annotations

import copy
import os
import os.path as osp
import shutil
import tempfile
import time
from collections.abc import Iterator

import numpy as np
from mmengine.config import Config

from .checks import check_input_shape, check_onnx_model
from .common import DeployError, Log, ensure_free, init_scope
from .configs import deploy_cfg_for, load_model_cfg, static_input_shape
from .data import build_dataloader, static_pipeline

__all__ = ['quantize_int8']


def _calibration_batches(model_cfg: Config, deploy_cfg: Config,
                         num_images: int) -> Iterator[np.ndarray]:
    """(1, 3, H, W) float32 inputs from the train set, preprocessed exactly as at test time."""
    from mmdet.registry import MODELS
    pipeline = static_pipeline(model_cfg.test_pipeline, static_input_shape(deploy_cfg))
    pipeline = [t for t in pipeline if t['type'] != 'LoadAnnotations']
    loader = build_dataloader(model_cfg, 'train', pipeline, batch_size=1, num_images=num_images)
    preprocessor = MODELS.build(copy.deepcopy(model_cfg.model.data_preprocessor))
    for data in loader:
        yield preprocessor(data, False)['inputs'].numpy()


def quantize_int8(model_cfg: str | Config,
                  onnx_in: str,
                  onnx_out: str,
                  deploy_cfg: str | Config | None = None,
                  num_calib: int = 32,
                  per_channel: bool = True,
                  reduce_range: bool = False,
                  calibrate_method: str = 'MinMax',
                  force: bool = False,
                  log: Log = print) -> dict[str, object]:
    """Static int8 quantization (ONNX Runtime, QDQ) of every ``Conv`` of an exported model.

    Only convolutions -- backbone, neck and head -- are quantized (int8 weights, uint8
    activations); score computation, box decoding, top-k and NMS stay float. Calibration uses
    ``num_calib`` images of the config's train set through the test pipeline.

    Returns:
        dict: ``quantized`` and ``excluded`` node counts, ``seconds``.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    init_scope()
    model_cfg = load_model_cfg(model_cfg)
    deploy_cfg = deploy_cfg_for(onnx_in, deploy_cfg)
    if not osp.isfile(onnx_in):
        raise DeployError(f'model {onnx_in} does not exist')
    if osp.abspath(onnx_in) == osp.abspath(onnx_out):
        raise DeployError('the int8 model must be written to another file than the float model')
    ensure_free([onnx_out], force)
    check_onnx_model(onnx_in)
    check_input_shape(onnx_in, deploy_cfg)  # before calibration: a wrong size fails there
    try:
        method = getattr(CalibrationMethod, calibrate_method)
    except AttributeError:
        raise DeployError(f'unknown calibration method {calibrate_method!r}; use MinMax, Entropy '
                          'or Percentile') from None
    batches = list(_calibration_batches(model_cfg, deploy_cfg, num_calib))
    if not batches:
        raise DeployError(f'no calibration images in the train set of {model_cfg.filename}')

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(batches)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {'input': x}

        def rewind(self):
            self._it = iter(batches)

    out_dir = osp.dirname(osp.abspath(onnx_out))
    os.makedirs(out_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=out_dir, prefix='.quant-')
    t0 = time.time()
    try:
        pre = osp.join(tmp, 'pre.onnx')
        try:
            # shape inference + graph optimisation, as ONNX Runtime recommends before quantizing
            quant_pre_process(onnx_in, pre, skip_symbolic_shape=True)
        except Exception as e:  # noqa: BLE001  (optional step: quantize the raw export instead)
            log(f'note: quant_pre_process failed ({type(e).__name__}); quantizing the model as is')
            shutil.copy(onnx_in, pre)
        pre_model = onnx.load(pre)
        convs = [n.name for n in pre_model.graph.node if n.op_type == 'Conv']
        others = [n.name for n in pre_model.graph.node if n.op_type != 'Conv']
        out_tmp = osp.join(tmp, 'int8.onnx')
        quantize_static(
            pre, out_tmp, Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=['Conv'],
            nodes_to_quantize=convs, nodes_to_exclude=others, per_channel=per_channel,
            reduce_range=reduce_range, activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8, calibrate_method=method,
            extra_options=dict(ActivationSymmetric=False, WeightSymmetric=True))
        check_onnx_model(out_tmp)
        os.replace(out_tmp, onnx_out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.time() - t0
    log(f'int8 model written to {onnx_out}: {len(convs)} Conv nodes quantized, '
        f'{len(batches)} calibration images, {seconds:.1f} s')
    return dict(quantized=len(convs), excluded=len(others), calibration_images=len(batches),
                seconds=seconds)
