"""EffNet: architecture table vs torchvision, freezing, drop path, checkpoint conversion, and
the shipped ImageNet EfficientNet-Lite0 weights classifying real COCO photographs."""
import json
import logging
import math
from functools import lru_cache

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from mmcv.cnn.bricks import DropPath
from mmdet.registry import MODELS
from mmengine.logging import MMLogger
from PIL import Image
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.models import EfficientNet_B0_Weights

import fcos_plugin  # noqa: F401  (registers EffNet)
from fcos_plugin.models.backbones import EffNet, EffNetClassifier
from fcos_plugin.models.backbones.efficientnet import (
    ARCH_SETTINGS,
    CLASSIFIER_PREFIXES,
    LITE_PIXEL_MEAN,
    LITE_PIXEL_STD,
    convert_lukemelas_efficientnet,
    convert_torchvision_efficientnet,
    efficientnet_lite0_checkpoint,
    efficientnet_spec,
)

COCO = '/work/shared/data/tiny_coco'
IMAGENET_CATEGORIES = EfficientNet_B0_Weights.IMAGENET1K_V1.meta['categories']

# COCO category -> ImageNet-1k classes that name the same thing (any of them in the top-5 counts).
COCO_TO_IMAGENET = {
    'airplane': ('airliner', 'warplane', 'wing'),
    'bus': ('school bus', 'trolleybus', 'minibus'),
    'cat': ('tabby', 'tiger cat', 'Persian cat', 'Siamese cat', 'Egyptian cat'),
    'elephant': ('Indian elephant', 'African elephant', 'tusker'),
    'keyboard': ('computer keyboard', 'typewriter keyboard', 'space bar'),
    'laptop': ('laptop', 'notebook'),
    'microwave': ('microwave',),
    'mouse': ('mouse',),
    'orange': ('orange',),
    'refrigerator': ('refrigerator',),
    'stop sign': ('street sign',),
    'teddy bear': ('teddy',),
    'tie': ('Windsor tie', 'bow tie'),
    'toilet': ('toilet seat',),
    'traffic light': ('traffic light',),
    'train': ('passenger car', 'electric locomotive', 'steam locomotive', 'bullet train',
              'streetcar', 'freight car'),
    'tv': ('television', 'monitor', 'screen'),
    'umbrella': ('umbrella',),
}
# ImageNet photos show objects at roughly 224 px; a box much smaller than that, blown up 3-4x,
# is no fair test of the weights, so only instances at least this big on their short side count.
MIN_BOX_SIDE = 96
MIN_CROPS = 8
MIN_TOP5_RATE = 0.8
MAX_RANDOM_TOP5_RATE = 0.3
# One small input shape everywhere: oneDNN compiles kernels per shape, which dominates CPU time.
SHAPE = (2, 3, 64, 96)


@pytest.fixture(autouse=True, scope='module')
def _one_thread():
    """These tensors are tiny, so with 2 threads OpenMP synchronisation dominates: this file
    took 35-85 s with 2 threads and 17 s with 1 on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _randomize_bn(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BN affine parameters and running statistics, so that parity tests compare
    more than identity normalisations."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            n = m.num_features
            m.weight.data = 0.5 + torch.rand(n, generator=g)
            m.bias.data = 0.1 * torch.randn(n, generator=g)
            m.running_mean = 0.1 * torch.randn(n, generator=g)
            m.running_var = 0.5 + torch.rand(n, generator=g)


def _bn_layers(module: torch.nn.Module) -> list[_BatchNorm]:
    return [m for m in module.modules() if isinstance(m, _BatchNorm)]


# ---- architecture ------------------------------------------------------------------------------
@pytest.mark.parametrize('arch', ['b0', 'lite0'])
@pytest.mark.parametrize('padding', ['same_tf', 'symmetric'])
def test_stage_outputs(arch, padding):
    model = MODELS.build(dict(type='EffNet', arch=arch, padding=padding))
    assert model.out_channels == [40, 112, 320] and model.out_strides == [8, 16, 32]
    model.eval()
    with torch.no_grad():
        feats = model(torch.randn(SHAPE))
        assert [tuple(f.shape) for f in feats] == [(2, 40, 8, 12), (2, 112, 4, 6), (2, 320, 2, 3)]
        model.out_indices = tuple(range(7))
        feats = model(torch.randn(1, 3, 65, 97))  # odd sizes: every stage output is ceil(H / s)
    assert [f.shape[1] for f in feats] == [16, 24, 40, 80, 112, 192, 320]
    strides = [2, 4, 8, 16, 16, 32, 32]
    assert [tuple(f.shape[2:]) for f in feats] == [
        (math.ceil(65 / s), math.ceil(97 / s)) for s in strides]


def test_registered_beside_mmdet_efficientnet():
    assert MODELS.get('EffNet') is EffNet
    assert MODELS.get('EfficientNet') is not EffNet


@pytest.mark.parametrize('arch', ['b0', 'lite0'])
def test_feature_extractor_and_classifier_are_one_network(arch):
    """``EffNet`` is the feature extractor (no head modules); ``num_classes`` gives an
    ``EffNetClassifier``, from Python and from a config, whose keys are the extractor's plus the head's,
    in the same order (checkpoints of either load into the other's shared part)."""
    features = EffNet(arch)
    classifier = EffNet(arch, num_classes=10)
    with torch.device('meta'):
        built = MODELS.build(dict(type='EffNet', arch=arch, num_classes=10))
    assert type(features) is EffNet and type(classifier) is EffNetClassifier is type(built)
    assert features.num_classes is None and classifier.num_classes == 10
    assert not any(hasattr(features, name) for name in ('conv_head', 'avgpool', 'dropout', 'fc'))
    own, full = list(features.state_dict()), list(classifier.state_dict())
    assert full[:len(own)] == own
    assert {k.split('.')[0] for k in full[len(own):]} == {'conv_head', 'fc'}
    assert all(k.startswith(CLASSIFIER_PREFIXES) for k in full[len(own):])
    x = torch.randn(SHAPE)
    with torch.no_grad():
        assert classifier.eval()(x).shape == (2, 10)
        for ours, theirs in zip(classifier.forward_features(x), features.eval()(x), strict=True):
            assert ours.shape == theirs.shape


@pytest.mark.parametrize('arch', [f'b{i}' for i in range(8)])
def test_b_variants_match_torchvision_layout(arch):
    """Every B variant of the one table has torchvision's exact tensors (names and shapes),
    checked on the meta device so B7 costs no memory or time."""
    with torch.device('meta'):
        tv = getattr(torchvision.models, f'efficientnet_{arch}')()
        ours = EffNet(arch, num_classes=1000, padding='symmetric')
    ref = tv.state_dict()
    converted = convert_torchvision_efficientnet(ref)
    assert len(converted) == len(ref)
    own = ours.state_dict()
    assert converted.keys() == own.keys()
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in own.items()}


def test_lite_variants_fix_stem_head_and_end_depths():
    """Lite: no SE, ReLU6, and (TF ``fix_head_stem``) unscaled stem/head widths and
    first/last stage depths, unlike the B variant with the same multipliers."""
    for lite, b in (('lite4', 'b4'), ('lite2', 'b2')):
        assert ARCH_SETTINGS[lite][:2] == ARCH_SETTINGS[b][:2]
        lite_spec, b_spec = efficientnet_spec(lite), efficientnet_spec(b)
        assert (lite_spec.stem_channels, lite_spec.head_channels) == (32, 1280)
        assert b_spec.stem_channels > 32 or b_spec.head_channels > 1280
        lite_depths = [len(s) for s in lite_spec.stages]
        b_depths = [len(s) for s in b_spec.stages]
        assert lite_depths[0] == lite_depths[-1] == 1
        assert lite_depths[1:-1] == b_depths[1:-1]
        assert [s[-1].out_channels for s in lite_spec.stages] == [
            s[-1].out_channels for s in b_spec.stages]
        assert all(blk.se_channels == 0 for s in lite_spec.stages for blk in s)
    with torch.device('meta'):
        model = EffNet('lite4')
        # HAT's "EfficientNet-B0" (B0, ReLU, no SE) is the Lite0 network.
        hat_b0 = EffNet('b0', act_cfg=dict(type='ReLU'), se_ratio=0, num_classes=1000)
        lite0 = EffNet('lite0', num_classes=1000)
    assert not any(hasattr(m, 'se') for m in model.modules())
    assert isinstance(model.stem.activate, torch.nn.ReLU6)
    assert {k: v.shape for k, v in hat_b0.state_dict().items()} == {
        k: v.shape for k, v in lite0.state_dict().items()}


# ---- training-time behaviour -------------------------------------------------------------------
def test_frozen_stages():
    torch.manual_seed(0)
    model = EffNet('lite0', frozen_stages=2, out_indices=(6,))
    model.train()
    frozen = [model.stem, model.stages[0], model.stages[1]]
    live = list(model.stages[2:])
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for m in live for p in m.parameters())
    assert all(not bn.training for m in frozen for bn in _bn_layers(m))
    assert all(bn.training for m in live for bn in _bn_layers(m))

    before = {id(bn): bn.running_mean.clone() for bn in _bn_layers(model)}
    model(torch.randn(SHAPE))[0].sum().backward()
    for m in frozen:
        for bn in _bn_layers(m):
            assert torch.equal(bn.running_mean, before[id(bn)])
        assert all(p.grad is None for p in m.parameters())
    for bn in _bn_layers(model.stages[2]):
        assert not torch.equal(bn.running_mean, before[id(bn)])
    assert model.stages[2][0].expand_conv.conv.weight.grad is not None


def test_norm_eval():
    model = EffNet('b0', norm_eval=True, out_indices=(6,))
    model.train()
    bns = _bn_layers(model)
    assert model.training and all(not bn.training for bn in bns)
    assert all(p.requires_grad for p in model.parameters())
    before = [bn.running_mean.clone() for bn in bns]
    model(torch.randn(SHAPE))
    assert all(torch.equal(bn.running_mean, b) for bn, b in zip(bns, before))


def test_drop_path_only_in_training():
    torch.manual_seed(0)
    model = EffNet('lite0', drop_path_rate=0.2, norm_eval=True, out_indices=(6,))
    _randomize_bn(model)
    blocks = [blk for stage in model.stages for blk in stage]
    rates = [blk.drop_path.drop_prob if isinstance(blk.drop_path, DropPath) else 0.0
             for blk in blocks]
    assert rates == pytest.approx([0.2 * i / len(blocks) for i in range(len(blocks))])

    plain = EffNet('lite0', drop_path_rate=0.0, norm_eval=True, out_indices=(6,))
    plain.load_state_dict(model.state_dict())
    x = torch.randn(SHAPE)
    with torch.no_grad():
        model.eval()
        plain.eval()
        assert torch.equal(model(x)[0], plain(x)[0])
        # norm_eval keeps BN deterministic in training, so only drop path can differ.
        model.train()
        plain.train()
        reference = plain(x)[0]
        assert torch.equal(plain(x)[0], reference)
        assert not torch.allclose(model(x)[0], reference, rtol=1e-3, atol=0)


# ---- torchvision parity ------------------------------------------------------------------------
def test_torchvision_b0_parity(tmp_path):
    """torchvision's efficientnet_b0 state dict converts key for key into EffNet('b0') with
    swish + SE + symmetric padding, and both compute the same features and logits."""
    torch.manual_seed(0)
    tv = torchvision.models.efficientnet_b0(weights=None).eval()
    _randomize_bn(tv)
    ref_state = tv.state_dict()
    converted = convert_torchvision_efficientnet(ref_state)
    assert len(converted) == len(ref_state)  # every key used, none merged or dropped

    ours = EffNet('b0', out_indices=range(7), act_cfg=dict(type='SiLU'), se_ratio=0.25,
                  padding='symmetric', norm_cfg=dict(type='BN', eps=1e-5), num_classes=1000)
    result = ours.load_state_dict(converted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    ours.eval()

    x = torch.randn(SHAPE)
    with torch.no_grad():
        ref_feats, y = [], tv.features[0](x)
        for stage in tv.features[1:8]:
            y = stage(y)
            ref_feats.append(y)
        ref_logits = tv(x)
        feats, logits = ours.forward_features(x), ours(x)
    for f, r in zip(feats, ref_feats, strict=True):
        torch.testing.assert_close(f, r, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-5)

    # The same file through init_cfg (torchvision layout detected and converted).
    path = tmp_path / 'tv_b0.pth'
    torch.save(ref_state, path)
    loaded = EffNet('b0', padding='symmetric', norm_cfg=dict(type='BN', eps=1e-5),
                    num_classes=1000, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    loaded.init_weights()
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), ref_logits, rtol=1e-4, atol=1e-5)


# ---- ImageNet EfficientNet-Lite0 weights -------------------------------------------------------
@lru_cache(maxsize=1)
def _lite0_state() -> dict:
    return torch.load(efficientnet_lite0_checkpoint(), map_location='cpu', weights_only=True)


@lru_cache(maxsize=1)
def _coco_crops() -> tuple[torch.Tensor, tuple[str, ...]]:
    """The largest annotated instance of each category of COCO_TO_IMAGENET in tiny COCO
    (train + val) if its box is at least MIN_BOX_SIDE on its short side, as a square context
    crop resized to 224, normalised for the TF weights."""
    best = {}
    for split in ('train2017', 'val2017'):
        with open(f'{COCO}/annotations/instances_{split}.json') as f:
            data = json.load(f)
        names = {c['id']: c['name'] for c in data['categories']}
        files = {i['id']: f"{COCO}/{split}/{i['file_name']}" for i in data['images']}
        for ann in data['annotations']:
            name = names[ann['category_id']]
            if name in COCO_TO_IMAGENET and not ann['iscrowd'] \
                    and ann['area'] > best.get(name, (0.0,))[0]:
                best[name] = (ann['area'], files[ann['image_id']], ann['bbox'])
    crops, labels = [], []
    for name, (_, path, (x, y, w, h)) in sorted(best.items()):
        if min(w, h) < MIN_BOX_SIDE:
            continue
        img = Image.open(path).convert('RGB')
        half = max(w, h) * 1.1 / 2  # a little context, as in ImageNet photos
        cx, cy = x + w / 2, y + h / 2
        box = (max(0, round(cx - half)), max(0, round(cy - half)),
               min(img.width, round(cx + half)), min(img.height, round(cy + half)))
        crop = np.asarray(img.crop(box).resize((224, 224), Image.BILINEAR), dtype=np.float32)
        crops.append(torch.from_numpy(crop).permute(2, 0, 1))
        labels.append(name)
    mean = torch.tensor(LITE_PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(LITE_PIXEL_STD).view(3, 1, 1)
    return (torch.stack(crops) - mean) / std, tuple(labels)


def _tf_same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow "SAME" padding: output ceil(size / stride), the odd pixel at the end."""
    pads = []
    for size in reversed(x.shape[-2:]):
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def _reference_lite0(state: dict, x: torch.Tensor) -> torch.Tensor:
    """EfficientNet-Lite0 logits computed straight off the lukemelas-style file, written from
    the TF/lukemelas definition (ReLU6, BN eps 1e-3, "SAME" padding, no SE) independently of
    EffNet. Strided blocks: first blocks of the stride-2 stages of r = 1, 2, 2, 3, 3, 4, 1."""
    strided_blocks = (1, 3, 5, 11)

    def bn(y, name):
        return F.batch_norm(y, state[f'{name}.running_mean'], state[f'{name}.running_var'],
                            state[f'{name}.weight'], state[f'{name}.bias'], False, 0.0, 1e-3)

    def conv(y, weight, stride=1, groups=1):
        y = _tf_same_pad(y, weight.shape[-1], stride)
        return F.conv2d(y, weight, stride=stride, groups=groups)

    x = F.relu6(bn(conv(x, state['_conv_stem.weight'], 2), '_bn0'))
    num_blocks = 1 + max(int(k.split('.')[1]) for k in state if k.startswith('_blocks.'))
    for n in range(num_blocks):
        p, inputs = f'_blocks.{n}.', x
        if f'{p}_expand_conv.weight' in state:
            x = F.relu6(bn(conv(x, state[f'{p}_expand_conv.weight']), f'{p}_bn0'))
        dw = state[f'{p}_depthwise_conv.weight']
        stride = 2 if n in strided_blocks else 1
        x = F.relu6(bn(conv(x, dw, stride, groups=dw.shape[0]), f'{p}_bn1'))
        x = bn(conv(x, state[f'{p}_project_conv.weight']), f'{p}_bn2')
        if x.shape == inputs.shape:
            x = x + inputs
    x = F.relu6(bn(conv(x, state['_conv_head.weight']), '_bn1'))
    return F.linear(x.mean((2, 3)), state['_fc.weight'], state['_fc.bias'])


def _top5_rate(model: EffNet) -> float:
    images, labels = _coco_crops()
    with torch.no_grad():
        top5 = model.eval()(images).topk(5, dim=1).indices
    hits = [any(IMAGENET_CATEGORIES[i] in COCO_TO_IMAGENET[name] for i in row.tolist())
            for row, name in zip(top5, labels)]
    return sum(hits) / len(hits)


def test_lite0_imagenet_weights_classify_coco_photos():
    model = EffNet('lite0', num_classes=1000,
                   init_cfg=dict(type='Pretrained', checkpoint='efficientnet-lite0'))
    model.init_weights()
    own = model.state_dict()
    file_state = _lite0_state()
    assert len(file_state) == len(own)  # one-to-one: every tensor of the file has a place
    assert torch.equal(own['fc.weight'], file_state['_fc.weight'])

    images, _ = _coco_crops()
    # Exact parity with the independent reference, at 224 and at odd sizes.
    odd = torch.randn(1, 3, 227, 161)
    with torch.no_grad():
        for x in (images[:2], odd):
            torch.testing.assert_close(model.eval()(x), _reference_lite0(file_state, x),
                                       rtol=1e-4, atol=1e-4)
    symmetric = EffNet('lite0', num_classes=1000, padding='symmetric')
    symmetric.load_pretrained('efficientnet-lite0')
    with torch.no_grad():  # the padding mode matters: PyTorch-style padding is not the TF net
        assert not torch.allclose(symmetric.eval()(odd), model(odd), rtol=1e-3, atol=1e-3)

    assert len(images) >= MIN_CROPS
    assert _top5_rate(model) >= MIN_TOP5_RATE

    torch.manual_seed(0)
    untrained = EffNet('lite0', num_classes=1000)
    untrained.init_weights()
    assert _top5_rate(untrained) <= MAX_RANDOM_TOP5_RATE


def test_lite0_backbone_drops_only_the_classifier():
    backbone = EffNet('lite0', init_cfg=dict(type='Pretrained', checkpoint='efficientnet-lite0'))
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        backbone.init_weights()
    finally:
        logger.removeHandler(handler)
    assert any('288 of the 296 tensors' in r.getMessage()
               and '8 classifier tensors (conv_head, fc) were dropped' in r.getMessage()
               for r in records)
    file_state = _lite0_state()
    converted = convert_lukemelas_efficientnet(
        file_state, [len(s) for s in efficientnet_spec('lite0').stages])
    for key, value in backbone.state_dict().items():
        if not key.endswith('num_batches_tracked'):
            assert torch.equal(value, converted[key]), key
    assert {k.split('.')[0] for k in converted.keys() - backbone.state_dict().keys()} == {
        'conv_head', 'fc'}


# ---- bad checkpoints ---------------------------------------------------------------------------
def test_bad_checkpoints_raise_clear_errors(tmp_path):
    state = dict(_lite0_state())

    missing = dict(state)
    del missing['_blocks.3._depthwise_conv.weight']
    path = tmp_path / 'missing.pth'
    torch.save(missing, path)
    with pytest.raises(ValueError,
                       match=r'missing\.pth.*stages\.2\.0\.depthwise_conv\.conv\.weight'):
        EffNet('lite0').load_pretrained(str(path))

    extra = dict(state, **{'_blocks.99._depthwise_conv.weight': torch.zeros(1)})
    path = tmp_path / 'extra.pth'
    torch.save(extra, path)
    with pytest.raises(ValueError, match=r'extra\.pth.*_blocks\.99\._depthwise_conv\.weight'):
        EffNet('lite0').load_pretrained(str(path))

    # A B0 (with SE) cannot take the Lite0 weights: its SE weights would stay random.
    with pytest.raises(ValueError, match=r'missing from the file.*se\.conv1'):
        EffNet('b0').load_pretrained('efficientnet-lite0')
    # Lite1 has more blocks than the file.
    with pytest.raises(ValueError, match='does not fit'):
        EffNet('lite1').load_pretrained('efficientnet-lite0')
    with pytest.raises(FileNotFoundError, match='neither a file nor one of the aliases'):
        EffNet('lite0').load_pretrained(str(tmp_path / 'nope.pth'))


def test_own_layout_under_a_prefix_roundtrips(tmp_path):
    """A detector checkpoint ({'state_dict': {'backbone.<key>': ...}}) loads back with prefix=."""
    source = EffNet('lite0')
    source.load_pretrained('efficientnet-lite0')
    path = tmp_path / 'detector.pth'
    state = {f'backbone.{k}': v for k, v in source.state_dict().items()}
    torch.save({'state_dict': {**state, 'neck.conv.weight': torch.zeros(1)}}, path)
    target = EffNet('lite0', init_cfg=dict(type='Pretrained', checkpoint=str(path),
                                             prefix='backbone.'))
    target.init_weights()
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
