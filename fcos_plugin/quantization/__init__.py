"""Quantization-aware training (QAT): fake-quantization modules matching ONNX Runtime's int8 kernels,
the :class:`QATFCOS` detector and the calibration hook (registered in mmdet's ``MODELS``/``HOOKS``).

Post-training quantization of an exported ONNX model is :mod:`fcos_plugin.deploy.quantization`.
"""
from .fake_quant import (
    ActQuant,
    fold_bn,
    qparams_of,
    quant_conv2d,
    quantize_weight,
    requant_like,
    uint8_qparams,
)
from .hooks import QATCalibrationHook
from .qat import QATFCOS, act_quantizers, calibrated, convert_to_qat, finish_calibration, set_mode

__all__ = ['ActQuant', 'QATCalibrationHook', 'QATFCOS', 'act_quantizers', 'calibrated', 'convert_to_qat',
           'finish_calibration', 'fold_bn', 'qparams_of', 'quant_conv2d', 'quantize_weight',
           'requant_like', 'set_mode', 'uint8_qparams']
