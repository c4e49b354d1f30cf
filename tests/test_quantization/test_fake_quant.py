"""The QAT arithmetic against a quantize-dequantize computed by hand with numpy, and the model's layout.

One mmcv ``ConvModule`` (3x3 conv + BN + ReLU6), switched to QAT by :func:`convert_to_qat`, must give
exactly what ONNX Runtime's ``QLinearConv`` computes from a uint8 input: BN folded into the weight,
int8 weights with one scale per output channel (``max|w'| / 127``), an int32 bias of scale
``input_scale * weight_scale``, the output requantized to uint8 after the ReLU6 with its zero point.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from mmcv.cnn import ConvModule

from fcos_plugin.quantization import ActQuant, convert_to_qat, uint8_qparams


def _quant(x, scale, zp, lo, hi):
    return np.clip(np.round(x / scale) + zp, lo, hi)


def _conv3x3(x, w, b):
    """(C_in, H, W) * (C_out, C_in, 3, 3), padding 1, stride 1, float64."""
    c_in, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    cols = np.stack([xp[:, i:i + h, j:j + wd] for i in range(3) for j in range(3)], 1)  # C_in,9,H,W
    return np.einsum('oik,ikhw->ohw', w.reshape(w.shape[0], c_in, 9), cols) + b[:, None, None]


@pytest.fixture
def unit():
    torch.manual_seed(0)
    m = torch.nn.Sequential(ConvModule(8, 16, 3, padding=1, norm_cfg=dict(type='BN', eps=1e-3),
                                       act_cfg=dict(type='ReLU6')))
    bn = m[0].bn
    with torch.no_grad():  # BN statistics far from identity, channel scales spread over 100x
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.05, 4)
        bn.weight.copy_(torch.logspace(-1, 1, 16)[torch.randperm(16)])
        bn.bias.uniform_(-0.5, 0.5)
    convert_to_qat(m)
    m.eval()
    x = torch.randn(1, 8, 12, 12) * 2 + 0.5
    in_quant = ActQuant()
    in_quant.observe(x)
    in_quant.finish_calibration()
    out = m[0].out_quant
    with torch.no_grad():
        out.min_val.fill_(0.0)
        out.max_val.fill_(5.0)
    out.finish_calibration()
    return m, in_quant, x


def test_conv_unit_equals_numpy_reference(unit):
    m, in_quant, x = unit
    with torch.no_grad():
        y = m(in_quant(x)).numpy()[0]
    conv, bn = m[0].conv, m[0].bn
    # input: uint8, asymmetric, scale and zero point of the observed range (ONNX Runtime MinMax)
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    s_x = np.float32((hi - lo) / 255)
    zp_x = np.clip(np.round(-lo / s_x), 0, 255)
    assert (float(in_quant.scale), int(in_quant.zero_point)) == pytest.approx((s_x, zp_x))
    x_dq = (_quant(x.numpy()[0], s_x, zp_x, 0, 255) - zp_x) * s_x
    # BN folded: w' = w * gamma / sqrt(var + eps), b' = beta - mean * gamma / sqrt(var + eps)
    g = bn.weight.detach().numpy() / np.sqrt(bn.running_var.numpy() + bn.eps)
    w = conv.weight.detach().numpy() * g[:, None, None, None]
    b = bn.bias.detach().numpy() - bn.running_mean.numpy() * g
    # int8 per output channel, symmetric
    s_w = np.abs(w).max(axis=(1, 2, 3)) / 127
    w_dq = _quant(w, s_w[:, None, None, None], 0, -128, 127) * s_w[:, None, None, None]
    b_dq = np.round(b / (s_x * s_w)) * (s_x * s_w)  # int32 bias
    acc = np.clip(_conv3x3(x_dq, w_dq, b_dq), 0, 6)  # ReLU6
    s_y, zp_y = (float(v) for v in uint8_qparams(torch.tensor(0.0), torch.tensor(5.0)))
    assert zp_y == 0
    ref = (_quant(acc, s_y, zp_y, 0, 255) - zp_y) * s_y
    err = np.abs(y - ref)
    # float32 vs float64 accumulation may round a value lying on a half step the other way
    assert (err < 1e-5).mean() > 0.999, f'{(err >= 1e-5).mean():.2%} of outputs differ'
    assert err.max() <= s_y * 1.001
    # and the reference is a quantized map with clipping: saturated and zero outputs both occur
    assert (ref == 0).any() and (ref >= 5.0 - s_y).any()


def test_bn_folded_equals_float_conv_bn(unit):
    """In float mode the folded convolution reproduces conv -> BN(eval) -> ReLU6 of the float unit."""
    from fcos_plugin.quantization import fold_bn
    m, _, x = unit
    conv, bn = m[0].conv, m[0].bn
    w, b = fold_bn(conv, bn)
    with torch.no_grad():
        ref = bn(torch.nn.functional.conv2d(x, conv.weight, None, 1, 1))
        got = torch.nn.functional.conv2d(x, w, b, 1, 1)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_qat_model_keeps_float_keys():
    """QATFCOS's state dict is the float FCOS's (``load_from=FLOAT_CKPT`` loads every weight) plus
    only the activation quantizers' buffers."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    from .conftest import DEMO_CFG, QAT_CFG
    register_all_modules()
    keys = {}
    for name, path in (('float', DEMO_CFG), ('qat', QAT_CFG)):
        cfg = Config.fromfile(path)
        cfg.model.backbone.init_cfg = None
        keys[name] = set(MODELS.build(cfg.model).state_dict())
    assert keys['float'] <= keys['qat']
    extra = keys['qat'] - keys['float']
    assert extra and all(any(p.endswith(('_quant', '_quants')) for p in k.split('.'))
                         for k in extra), sorted(extra)[:5]
