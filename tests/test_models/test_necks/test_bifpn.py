"""Tests for the BiFPN neck: shapes, parity with EfficientDet's unrolled equations, fusion
weights, gradients and parameter counts derived from the architecture."""
import pytest
import torch
import torch.nn.functional as F
from mmdet.registry import MODELS

import fcos_plugin  # noqa: F401  (registers BiFPNNeck)
from fcos_plugin.models.necks import BiFPNNeck
from fcos_plugin.models.necks.bifpn import FUSION_EPS, FastNormalizedFusion

B0_CHANNELS = [40, 112, 320]  # EfficientNet-B0 / Lite0 at strides 8, 16, 32
IN_STRIDES = [8, 16, 32]
OUT_STRIDES = [8, 16, 32, 64, 128]


def ceil_div(n: int, stride: int) -> int:
    return -(-n // stride)


def backbone_feats(h: int, w: int, channels=B0_CHANNELS, batch: int = 1, seed: int = 0):
    """Features shaped like an EfficientNet's at strides 8/16/32 for an ``h x w`` image."""
    g = torch.Generator().manual_seed(seed)
    return tuple(
        torch.randn(batch, c, ceil_div(h, s), ceil_div(w, s), generator=g)
        for c, s in zip(channels, IN_STRIDES))


def randomize(neck: BiFPNNeck, seed: int = 0) -> None:
    """Non-trivial BN statistics and fusion weights (one clipped to zero by the ReLU)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in neck.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            elif isinstance(m, FastNormalizedFusion):
                m.weight.copy_(torch.rand(m.num_inputs, generator=g) * 2)
                m.weight[0] = -0.5


# --------------------------------------------------------------------------------------------
# Reference: EfficientDet's BiFPN written out level by level (as in the paper's equations and
# mmdet's projects/EfficientDet), in functional form, reading the parameters of the module.

def ref_bn(x, bn):
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0,
                        bn.eps)


def ref_conv_bn(x, conv_module):
    conv = conv_module.conv
    return ref_bn(F.conv2d(x, conv.weight, conv.bias, padding=conv.padding), conv_module.norm)


def ref_node(node, inputs, act, separable):
    w = F.relu(node.fusion.weight)
    w = w / (w.sum() + FUSION_EPS)
    x = act(sum(wi * xi for wi, xi in zip(w, inputs)))
    if separable:
        dw = node.conv.depthwise_conv.conv
        pw = node.conv.pointwise_conv
        x = F.conv2d(x, dw.weight, dw.bias, padding=1, groups=x.shape[1])
        return ref_conv_bn(x, pw)
    return ref_conv_bn(x, node.conv)


def ref_bifpn(neck, c3, c4, c5, act, separable):
    up = lambda x, ref: F.interpolate(x, size=ref.shape[-2:], mode='nearest')  # noqa: E731
    down = lambda x: F.max_pool2d(x, 3, 2, 1)  # noqa: E731
    p3, p4, p5 = (ref_conv_bn(c, lat) for c, lat in zip((c3, c4, c5), neck.laterals))
    p6 = down(ref_conv_bn(c5, neck.extra_proj))
    p7 = down(p6)
    for cell in neck.cells:
        td, bu = cell.top_down, cell.bottom_up
        node = lambda n, *xs: ref_node(n, xs, act, separable)  # noqa: E731
        p6_td = node(td[3], p6, up(p7, p6))
        p5_td = node(td[2], p5, up(p6_td, p5))
        p4_td = node(td[1], p4, up(p5_td, p4))
        p3_out = node(td[0], p3, up(p4_td, p3))
        p4_out = node(bu[0], p4, p4_td, down(p3_out))
        p5_out = node(bu[1], p5, p5_td, down(p4_out))
        p6_out = node(bu[2], p6, p6_td, down(p5_out))
        p7_out = node(bu[3], p7, down(p6_out))
        p3, p4, p5, p6, p7 = p3_out, p4_out, p5_out, p6_out, p7_out
    return p3, p4, p5, p6, p7


@pytest.mark.parametrize('separable,act_cfg,act', [
    (True, dict(type='ReLU'), F.relu),
    (False, dict(type='ReLU'), F.relu),
    (True, dict(type='Swish'), F.silu),
])
def test_matches_unrolled_efficientdet_equations(separable, act_cfg, act):
    neck = BiFPNNeck(B0_CHANNELS, 16, num_repeats=2, use_separable=separable, act_cfg=act_cfg)
    neck.init_weights()
    randomize(neck)
    neck.eval()
    feats = backbone_feats(203, 141)  # odd sizes: exercises exact-size upsampling
    with torch.no_grad():
        outs = neck(feats)
        refs = ref_bifpn(neck, *feats, act=act, separable=separable)
    assert len(outs) == 5
    for out, ref in zip(outs, refs):
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('size', [(512, 512), (480, 640), (385, 513)])
def test_output_shapes_and_strides(size):
    h, w = size
    neck = MODELS.build(dict(type='BiFPNNeck', in_channels=B0_CHANNELS, out_channels=64))
    with torch.no_grad():
        outs = neck.eval()(backbone_feats(h, w))
    assert [tuple(o.shape) for o in outs] == [
        (1, 64, ceil_div(h, s), ceil_div(w, s)) for s in OUT_STRIDES]


def test_fewer_outputs_and_matching_top_channels():
    # num_outs == len(in_channels): no extra level, no extra projection.
    neck = BiFPNNeck([8, 16, 32], 16, num_outs=3, num_repeats=1)
    assert neck.extra_proj is None
    outs = neck.eval()(backbone_feats(96, 64, channels=[8, 16, 32]))
    assert [o.shape[-2:] for o in outs] == [(12, 8), (6, 4), (3, 2)]
    # Top input already has out_channels: P6 pools it directly.
    neck = BiFPNNeck([8, 16, 16], 16, num_outs=4, num_repeats=1)
    assert neck.extra_proj is None
    outs = neck.eval()(backbone_feats(96, 64, channels=[8, 16, 16]))
    assert [o.shape[-2:] for o in outs] == [(12, 8), (6, 4), (3, 2), (2, 1)]


def test_bad_inputs_raise_clear_errors():
    neck = BiFPNNeck(B0_CHANNELS, 16, num_repeats=1)
    feats = backbone_feats(64, 64)
    with pytest.raises(ValueError, match='expects 3 input maps'):
        neck(feats[:2])
    # A floor-halved level (e.g. 65 -> 32 instead of 33) cannot be matched by the pooling path.
    c3 = torch.randn(1, 40, 65, 65)
    c4 = torch.randn(1, 112, 32, 32)
    c5 = torch.randn(1, 320, 16, 16)
    with pytest.raises(ValueError, match='ceil'):
        neck((c3, c4, c5))


def test_fusion_weights_normalized_nonnegative_and_learnable():
    fusion = FastNormalizedFusion(3)
    with torch.no_grad():
        fusion.weight.copy_(torch.tensor([-1.0, 2.0, 0.5]))
    w = fusion.normalized_weights()
    assert (w >= 0).all()
    assert w[0] == 0  # a negative raw weight is clipped, not allowed to subtract
    torch.testing.assert_close(w.sum(), torch.tensor(2.5 / (2.5 + FUSION_EPS)))
    xs = [torch.randn(2, 4, 5, 5) for _ in range(3)]
    out = fusion(xs)
    torch.testing.assert_close(out, w[1] * xs[1] + w[2] * xs[2])
    out.pow(2).sum().backward()
    assert fusion.weight.grad[0] == 0 and (fusion.weight.grad[1:] != 0).all()

    # Inside the neck, at initialisation (all ones = averaging) every fusion weight learns.
    neck = BiFPNNeck(B0_CHANNELS, 16, num_repeats=2)
    fusions = [m for m in neck.modules() if isinstance(m, FastNormalizedFusion)]
    assert len(fusions) == 2 * 8  # 8 nodes per 5-level cell
    for f in fusions:
        torch.testing.assert_close(f.normalized_weights().sum(),
                                   torch.tensor(f.num_inputs / (f.num_inputs + FUSION_EPS)))
    sum(o.pow(2).mean() for o in neck(backbone_feats(64, 96, batch=2))).backward()
    for f in fusions:
        assert f.weight.grad is not None and (f.weight.grad != 0).all()


@pytest.mark.parametrize('separable', [True, False])
def test_gradients_reach_every_parameter(separable):
    neck = BiFPNNeck(B0_CHANNELS, 16, num_repeats=2, use_separable=separable)
    neck.init_weights()
    neck.train()
    sum(o.pow(2).mean() for o in neck(backbone_feats(64, 96, batch=2))).backward()
    for name, p in neck.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


def expected_num_params(in_channels, c, num_outs, num_repeats, separable):
    """Parameter count of the architecture, term by term (BN: weight + bias = 2c)."""
    bn = 2 * c
    lateral = sum(ci * c + bn for ci in in_channels)
    extra = in_channels[-1] * c + bn if num_outs > len(in_channels) and \
        in_channels[-1] != c else 0
    # Top-down: L-1 two-input nodes; bottom-up: L-2 three-input nodes and one two-input node.
    nodes = 2 * (num_outs - 1)
    fusion = 2 * (num_outs - 1) + 3 * (num_outs - 2) + 2
    if separable:
        conv = 3 * 3 * c + c * c + bn  # depthwise 3x3, pointwise 1x1, no biases (BN follows)
    else:
        conv = 3 * 3 * c * c + bn
    return lateral + extra + num_repeats * (fusion + nodes * conv)


def num_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize('in_channels,c,num_outs', [
    (B0_CHANNELS, 64, 5), ([8, 16, 32], 16, 3), ([8, 16, 16], 16, 4)])
@pytest.mark.parametrize('separable', [True, False])
def test_parameter_count_matches_architecture(in_channels, c, num_outs, separable):
    counts = {}
    for repeats in (1, 2, 3):
        neck = BiFPNNeck(in_channels, c, num_outs=num_outs, num_repeats=repeats,
                         use_separable=separable)
        counts[repeats] = num_params(neck)
        assert counts[repeats] == expected_num_params(in_channels, c, num_outs, repeats,
                                                      separable)
    # Each extra cell adds the same, non-zero number of parameters.
    per_cell = num_params(neck.cells[0])
    assert per_cell > 0
    assert counts[2] - counts[1] == counts[3] - counts[2] == per_cell


def test_separable_vs_plain_parameter_difference():
    c, repeats, num_outs = 64, 3, 5
    sep = BiFPNNeck(B0_CHANNELS, c, num_repeats=repeats, use_separable=True)
    plain = BiFPNNeck(B0_CHANNELS, c, num_repeats=repeats, use_separable=False)
    nodes = repeats * 2 * (num_outs - 1)
    # Per node: 9c^2 (plain 3x3) against 9c + c^2 (depthwise 3x3 + pointwise 1x1).
    assert num_params(plain) - num_params(sep) == nodes * (9 * c * c - (9 * c + c * c))


def test_onnx_export_keeps_input_size_dynamic():
    """Exported once (TorchScript exporter, as mmdeploy uses), run at another, odd size."""
    import io
    import warnings

    ort = pytest.importorskip('onnxruntime')
    neck = BiFPNNeck(B0_CHANNELS, 16, num_repeats=1).eval()
    names = ['c3', 'c4', 'c5']
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # tracer warnings about shape-derived Python ints
        torch.onnx.export(neck, (backbone_feats(128, 160),), buf, dynamo=False, opset_version=11,
                          input_names=names,
                          dynamic_axes={n: {2: f'h{n}', 3: f'w{n}'} for n in names})
    sess = ort.InferenceSession(buf.getvalue())
    feats = backbone_feats(203, 141, seed=1)
    outs = sess.run(None, {n: x.numpy() for n, x in zip(names, feats)})
    with torch.no_grad():
        refs = neck(feats)
    for out, ref in zip(outs, refs):
        torch.testing.assert_close(torch.from_numpy(out), ref, rtol=1e-4, atol=1e-5)
