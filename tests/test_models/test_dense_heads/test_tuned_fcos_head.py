"""TunedFCOSHead: PyFocalLoss parity, dynamic (SimOTA-style) assignment against a loop reference,
loss composition, classic-mode parity with mmdet's FCOSHead, sqrt-score inference against a
torchvision reference, and a small overfit run."""
import copy
import os.path as osp

import pytest
import torch
import torch.nn.functional as F
from mmcv.cnn import DepthwiseSeparableConvModule
from mmdet.models.dense_heads import FCOSHead
from mmdet.models.losses import FocalLoss
from mmdet.registry import MODELS
from mmengine.config import Config, ConfigDict
from mmengine.structures import InstanceData
from torch import nn
from torchvision.ops import batched_nms, box_iou, generalized_box_iou, generalized_box_iou_loss

import fcos_plugin  # noqa: F401  (registers TunedFCOSHead, PyFocalLoss, MatchCostSimOTAAssigner)
from fcos_plugin.models.dense_heads import MatchCostSimOTAAssigner, TunedFCOSHead
from fcos_plugin.models.losses import PyFocalLoss

IMG = 128
STRIDES = (8, 16, 32, 64, 128)
NUM_CLASSES = 4
INF = 1e5


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """These tensors are tiny: one intra-op thread is faster, and much faster when the CPUs are
    shared with other jobs (thread oversubscription)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The head's assigner, test_cfg and dynamic-mode init live in the base config only.
BASE_MODEL = Config.fromfile(
    osp.join(osp.dirname(__file__), '../../../configs/_base_/models/fcos_effb0_bifpn.py')).model


def make_head(**kwargs) -> TunedFCOSHead:
    cfg = dict(type='TunedFCOSHead', num_classes=NUM_CLASSES, in_channels=16, feat_channels=16,
               test_cfg=copy.deepcopy(BASE_MODEL.test_cfg))
    if kwargs.get('assign_mode', 'dynamic') == 'dynamic':
        cfg.update(train_cfg=copy.deepcopy(BASE_MODEL.train_cfg),
                   init_cfg=copy.deepcopy(BASE_MODEL.bbox_head.init_cfg))
    cfg.update(kwargs)
    return MODELS.build(cfg)


def make_feats(num_imgs: int = 2, channels: int = 16, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(num_imgs, channels, IMG // s, IMG // s, generator=g) for s in STRIDES]


def gt(boxes, labels) -> InstanceData:
    return InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                        labels=torch.tensor(labels, dtype=torch.long))


METAS = [dict(img_shape=(IMG, IMG), scale_factor=(1.0, 1.0))] * 2
GTS = [gt([[5.3, 7.1, 41.2, 52.6], [20.4, 10.2, 120.7, 101.3], [60.2, 61.8, 71.5, 78.9]], [0, 2, 3]),
       gt([[30.5, 40.3, 90.1, 110.6]], [1])]
EMPTY = gt([], [])


# ---------------------------------------------------------------------------------------------
# PyFocalLoss
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize('with_weight', [False, True])
@pytest.mark.parametrize('reduction', ['mean', 'sum', 'none'])
def test_py_focal_loss_equals_mmdet_focal_loss_on_cpu(with_weight, reduction):
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(50, 7, generator=g) * 3
    labels = torch.randint(0, 8, (50,), generator=g)  # 7 = background
    weight = torch.rand(50, generator=g) if with_weight else None
    cfg = dict(use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.5, reduction=reduction)
    ours = MODELS.build(dict(type='PyFocalLoss', **cfg))
    assert isinstance(ours, PyFocalLoss)
    avg = 13.0 if reduction == 'mean' else None
    expected = FocalLoss(**cfg)(pred, labels, weight, avg_factor=avg)
    torch.testing.assert_close(ours(pred, labels, weight, avg_factor=avg), expected, rtol=0, atol=0)
    onehot = F.one_hot(labels, 8)[:, :7]
    torch.testing.assert_close(ours(pred, onehot, weight, avg_factor=avg), expected, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Assignment
# ---------------------------------------------------------------------------------------------
def grid_priors(size: int, stride: int) -> torch.Tensor:
    """(P, 4) points (x, y, stride, stride), row-major, centred in their cells."""
    c = (torch.arange(size // stride, dtype=torch.float64) + 0.5) * stride
    ys, xs = torch.meshgrid(c, c, indexing='ij')
    s = torch.full_like(xs, stride)
    return torch.stack([xs, ys, s, s], -1).reshape(-1, 4)


def geometry(priors, gt_boxes, radius):
    """(P, G) inside-box and inside-centre-region masks."""
    x, y, s = priors[:, 0:1], priors[:, 1:2], priors[:, 2:3]
    in_box = (x > gt_boxes[:, 0]) & (x < gt_boxes[:, 2]) & (y > gt_boxes[:, 1]) & (y < gt_boxes[:, 3])
    cx = (gt_boxes[:, 0] + gt_boxes[:, 2]) / 2
    cy = (gt_boxes[:, 1] + gt_boxes[:, 3]) / 2
    in_ctr = ((x - cx).abs() < radius * s) & ((y - cy).abs() < radius * s)
    return in_box, in_ctr


def reference_assign(priors, logits, boxes, gt_boxes, gt_labels, radius=2.5, topk=10,
                     cls_w=1.0, iou_w=2.0, alpha=0.25, gamma=2.0, candidates_only=True):
    """Loop implementation of the recipe, in float64: returns (gt_inds (P,), claims {point: [gts]},
    cost (P, G), dynamic ks)."""
    priors, logits, boxes, gt_boxes = (t.double() for t in (priors, logits, boxes, gt_boxes))
    in_box, in_ctr = geometry(priors, gt_boxes, radius)
    candidate = in_box & in_ctr
    valid = (in_box | in_ctr).any(1).nonzero().squeeze(1)
    p = logits.sigmoid()[:, gt_labels]
    focal = (alpha * (1 - p) ** gamma * -(p + 1e-12).log()
             - (1 - alpha) * p ** gamma * -(1 - p + 1e-12).log())
    cost = cls_w * focal - iou_w * generalized_box_iou(boxes, gt_boxes) + INF * (~candidate)
    iou = box_iou(boxes, gt_boxes)
    claims, ks = {}, []
    for g in range(len(gt_boxes)):
        k = max(int(iou[valid, g].topk(min(topk, len(valid))).values.sum()), 1)
        ks.append(k)
        for i in valid[cost[valid, g].argsort()[:k]].tolist():
            claims.setdefault(i, []).append(g)
    gt_inds = torch.zeros(len(priors), dtype=torch.long)
    for i, gs in claims.items():
        g = min(gs, key=lambda g: cost[i, g].item())
        if candidate[i, g] or not candidates_only:
            gt_inds[i] = g + 1
    return gt_inds, claims, cost, ks


def run_assigner(assigner, priors, logits, boxes, gt_instances):
    pred = InstanceData(priors=priors.float(), scores=logits.float(), bboxes=boxes.float())
    return assigner.assign(pred, gt_instances)


def centred_boxes(priors, w, h, jitter, seed):
    """A box of about w x h centred on every point (jittered sizes to break ties)."""
    g = torch.Generator().manual_seed(seed)
    ws = w * (1 + jitter * torch.rand(len(priors), generator=g, dtype=torch.float64))
    hs = h * (1 + jitter * torch.rand(len(priors), generator=g, dtype=torch.float64))
    x, y = priors[:, 0], priors[:, 1]
    return torch.stack([x - ws / 2, y - hs / 2, x + ws / 2, y + hs / 2], 1)


def test_one_gt_positives_are_the_k_best_candidates():
    priors = grid_priors(96, 8)
    gt_inst = gt([[13.0, 17.0, 61.0, 70.0]], [2])
    boxes = centred_boxes(priors, 48.0, 53.0, 0.1, seed=0)
    logits = torch.zeros(len(priors), NUM_CLASSES, dtype=torch.float64)  # equal cls cost
    result = run_assigner(MatchCostSimOTAAssigner(), priors, logits, boxes, gt_inst)
    pos = (result.gt_inds == 1).nonzero().squeeze(1)

    in_box, in_ctr = geometry(priors, gt_inst.bboxes.double(), 2.5)
    candidate = (in_box & in_ctr)[:, 0]
    valid = (in_box | in_ctr)[:, 0]
    k = int(box_iou(boxes[valid], gt_inst.bboxes.double())[:, 0].topk(10).values.sum())
    assert 1 <= k < int(candidate.sum()), 'the case must make k smaller than the candidate count'
    assert len(pos) == k
    assert candidate[pos].all()
    # With equal class cost the k candidates of highest GIoU win.
    giou = generalized_box_iou(boxes, gt_inst.bboxes.double())[:, 0]
    giou[~candidate] = -2
    ranked = giou.argsort(descending=True)
    assert giou[ranked[k - 1]] > giou[ranked[k]], 'tie at the k-th candidate'
    assert set(pos.tolist()) == set(ranked[:k].tolist())
    assert (result.labels[pos] == 2).all() and (result.labels[result.gt_inds == 0] == -1).all()
    torch.testing.assert_close(result.max_overlaps[pos].double(),
                               box_iou(boxes[pos], gt_inst.bboxes.double())[:, 0])


def test_small_gt_keeps_only_candidates():
    """k can exceed a small GT's candidate count: positives stay inside its box and centre region
    (mmdet's SimOTA, candidates_only=False, would also take non-candidates)."""
    priors = grid_priors(96, 8)
    gt_inst = gt([[41.0, 42.0, 53.0, 51.0]], [0])
    # Every point predicts (nearly) the GT box: the top-10 IoUs sum to about 10.
    g = torch.Generator().manual_seed(1)
    boxes = gt_inst.bboxes.double() + 0.2 * torch.rand(len(priors), 4, generator=g, dtype=torch.float64)
    logits = torch.zeros(len(priors), NUM_CLASSES, dtype=torch.float64)
    in_box, in_ctr = geometry(priors, gt_inst.bboxes.double(), 2.5)
    n_cand = int((in_box & in_ctr).sum())
    _, _, _, ks = reference_assign(priors, logits, boxes, gt_inst.bboxes, gt_inst.labels)
    assert ks[0] > n_cand
    strict = run_assigner(MatchCostSimOTAAssigner(), priors, logits, boxes, gt_inst)
    assert int((strict.gt_inds > 0).sum()) == n_cand
    assert (in_box & in_ctr)[strict.gt_inds > 0].all()
    loose = run_assigner(MatchCostSimOTAAssigner(candidates_only=False), priors, logits, boxes,
                         gt_inst)
    assert int((loose.gt_inds > 0).sum()) == ks[0]


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_assignment_matches_loop_reference_and_conflicts_go_to_lower_cost(seed):
    priors = grid_priors(72, 8)
    gt_inst = gt([[8.3, 8.7, 56.1, 55.4], [16.2, 15.9, 64.6, 63.1], [50.3, 4.2, 70.1, 30.5]],
                 [0, 1, 0])
    g = torch.Generator().manual_seed(seed)
    boxes = centred_boxes(priors, 46.0, 44.0, 0.3, seed=seed)
    logits = torch.randn(len(priors), NUM_CLASSES, generator=g, dtype=torch.float64) * 2
    result = run_assigner(MatchCostSimOTAAssigner(), priors, logits, boxes, gt_inst)
    expected, claims, cost, _ = reference_assign(priors, logits, boxes, gt_inst.bboxes,
                                                 gt_inst.labels)
    assert torch.equal(result.gt_inds, expected)
    contested = {i: gs for i, gs in claims.items() if len(gs) > 1}
    assert contested, 'the case must contain a point claimed by two GTs'
    for i, gs in contested.items():
        winner = min(gs, key=lambda g: cost[i, g].item())
        assert result.gt_inds[i] == winner + 1


def test_assigner_lives_in_task_modules_and_old_path_reexports_it():
    from mmdet.registry import TASK_UTILS

    from fcos_plugin.models.dense_heads import tuned_fcos_head
    from fcos_plugin.models.task_modules.assigners import MatchCostSimOTAAssigner as moved
    assert tuned_fcos_head.MatchCostSimOTAAssigner is moved is MatchCostSimOTAAssigner
    assert TASK_UTILS.get('MatchCostSimOTAAssigner') is moved


def test_missing_config_parts_fail_clearly():
    bare = MODELS.build(dict(type='TunedFCOSHead', num_classes=NUM_CLASSES, in_channels=16,
                             feat_channels=16))
    assert bare.assigner is None and bare.test_cfg is None
    with pytest.raises(ValueError, match='train_cfg.assigner'):
        bare.loss_by_feat(*bare(make_feats()), GTS, METAS)
    bare.eval()
    with pytest.raises(ValueError, match='test_cfg'), torch.no_grad():
        bare.predict_by_feat(*bare(make_feats()), batch_img_metas=METAS)
    with pytest.raises(ValueError, match='train_cfg.assigner'):
        make_head(train_cfg=dict(allowed_border=-1))


def test_assigner_cost_and_geometry_come_from_config():
    head = make_head(train_cfg=dict(assigner=dict(
        type='MatchCostSimOTAAssigner', center_radius=1.0, candidate_topk=5,
        reg_cost=dict(type='IoUCost', iou_mode='giou', weight=3.0))))
    assert isinstance(head.assigner, MatchCostSimOTAAssigner)
    assert (head.assigner.center_radius, head.assigner.candidate_topk) == (1.0, 5)
    assert head.assigner.reg_cost.weight == 3.0
    assert make_head().assigner.reg_cost.weight == 2.0
    priors = grid_priors(96, 8)
    gt_inst = gt([[13.0, 17.0, 61.0, 70.0]], [2])
    boxes = centred_boxes(priors, 48.0, 53.0, 0.1, seed=0)
    logits = torch.zeros(len(priors), NUM_CLASSES, dtype=torch.float64)
    result = run_assigner(head.assigner, priors, logits, boxes, gt_inst)
    expected, _, _, _ = reference_assign(priors, logits, boxes, gt_inst.bboxes, gt_inst.labels,
                                         radius=1.0, topk=5, iou_w=3.0)
    assert torch.equal(result.gt_inds, expected)


def test_assigner_without_gt_assigns_background():
    priors = grid_priors(32, 8)
    result = run_assigner(MatchCostSimOTAAssigner(), priors, torch.zeros(len(priors), 3),
                          centred_boxes(priors, 8, 8, 0.1, 0), EMPTY)
    assert (result.gt_inds == 0).all() and (result.labels == -1).all()


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------
def test_losses_finite_and_composed_as_specified():
    torch.manual_seed(0)
    # PyTorch's default init and boxes of a few strides (FCOS's init predicts near-empty boxes,
    # whose IoUs give k = 1): several points per GT become positive.
    head = make_head()
    with torch.no_grad():
        head.conv_reg.bias.fill_(2.0)
    feats = make_feats()
    outs = head(feats)
    losses = head.loss_by_feat(*outs, GTS, METAS)
    assert set(losses) == {'loss_cls', 'loss_bbox', 'loss_centerness', 'pos_per_gt', 'pos_iou'}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())

    # Rebuild each term from the assignment with torchvision / torch functions.
    cls_scores, bbox_preds, centernesses = outs
    priors = torch.cat([grid_priors(IMG, s) for s in STRIDES]).float()
    flat = [torch.cat([t[i].permute(1, 2, 0).reshape(-1, t[i].size(0)) for t in lvl], 0)
            for i in range(2) for lvl in (cls_scores, bbox_preds, centernesses)]
    labels, targets, decoded, cls_all, ctr_all = [], [], [], [], []
    for i in range(2):
        cls, dist, ctr = flat[3 * i:3 * i + 3]
        dist = dist * priors[:, 2:3]
        boxes = torch.cat([priors[:, :2] - dist[:, :2], priors[:, :2] + dist[:, 2:]], 1)
        lab, tgt = head._get_dynamic_targets_single(cls.detach(), boxes.detach(), GTS[i], priors)
        labels.append(lab), targets.append(tgt), decoded.append(boxes)
        cls_all.append(cls), ctr_all.append(ctr[:, 0])
    labels, targets, decoded = torch.cat(labels), torch.cat(targets), torch.cat(decoded)
    cls_all, ctr_all = torch.cat(cls_all), torch.cat(ctr_all)
    pos = labels < NUM_CLASSES
    num_pos = int(pos.sum())
    assert num_pos > len(GTS[0]) + len(GTS[1])
    onehot = F.one_hot(labels, NUM_CLASSES + 1)[:, :NUM_CLASSES].float()
    p = cls_all.sigmoid()
    focal = F.binary_cross_entropy_with_logits(cls_all, onehot, reduction='none') * (
        (0.25 * onehot + 0.75 * (1 - onehot)) * ((onehot - p).abs() ** 2))
    torch.testing.assert_close(losses['loss_cls'], focal.sum() / num_pos)
    torch.testing.assert_close(
        losses['loss_bbox'],
        generalized_box_iou_loss(decoded[pos], targets[pos], reduction='sum') / num_pos,
        rtol=1e-5, atol=1e-6)
    iou = box_iou(decoded[pos].detach(), targets[pos]).diagonal()
    torch.testing.assert_close(
        losses['loss_centerness'],
        F.binary_cross_entropy_with_logits(ctr_all[pos], iou, reduction='sum') / num_pos)
    # the logged assignment statistics describe this very assignment
    torch.testing.assert_close(losses['pos_per_gt'], torch.tensor(num_pos / (len(GTS[0]) + len(GTS[1]))))
    torch.testing.assert_close(losses['pos_iou'], iou.mean())


def test_image_without_objects_gives_zero_box_loss():
    head = make_head()
    head.init_weights()
    losses = head.loss_by_feat(*head(make_feats()), [EMPTY, EMPTY], METAS)
    assert losses['loss_bbox'] == 0 and losses['loss_centerness'] == 0
    assert torch.isfinite(losses['loss_cls']) and losses['loss_cls'] > 0
    sum(losses.values()).backward()  # zero terms stay attached to the graph

    mixed = head.loss_by_feat(*head(make_feats()), [GTS[0], EMPTY], METAS)
    assert all(torch.isfinite(v) and v > 0 for v in mixed.values())


@pytest.mark.parametrize('use_separable', [False, True])
def test_gradients_reach_every_parameter(use_separable):
    head = make_head(use_separable=use_separable)
    head.init_weights()
    losses = head.loss_by_feat(*head(make_feats()), GTS, METAS)
    sum(losses.values()).backward()
    for name, param in head.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        # a level with no positive gets no box gradient: its scale and its regression-tower norms
        if not name.startswith(('scales.', 'reg_norms.')):
            assert param.grad.abs().sum() > 0, name
    assert sum(s.scale.grad.abs() for s in head.scales) > 0
    assert sum(p.grad.abs().sum() for p in head.reg_norms.parameters()) > 0


def per_level_state_dict(reference: FCOSHead) -> dict:
    """mmdet FCOSHead weights in TunedFCOSHead's layout: tower convs as they are, each tower norm
    copied to every level."""
    out = {}
    for key, value in reference.state_dict().items():
        parts = key.split('.')
        if parts[0] in ('cls_convs', 'reg_convs') and parts[2] == 'bn':
            tower, layer = parts[0].replace('convs', 'norms'), parts[1]
            for level in range(len(reference.strides)):
                out['.'.join([tower, str(level), layer, *parts[3:]])] = value
        else:
            out[key] = value
    return out


def test_classic_mode_losses_equal_mmdet_fcos_head():
    common = dict(num_classes=NUM_CLASSES, in_channels=16, feat_channels=16, stacked_convs=4,
                  strides=STRIDES, norm_on_bbox=True, centerness_on_reg=True,
                  center_sampling=True, center_sample_radius=1.5,
                  loss_bbox=dict(type='GIoULoss', loss_weight=1.0),
                  norm_cfg=dict(type='BN', requires_grad=True))
    reference = FCOSHead(**common, loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0,
                                                 alpha=0.25, loss_weight=1.0))
    ours = make_head(assign_mode='classic', **common)
    reference.init_weights()
    ours.load_state_dict(per_level_state_dict(reference))
    feats = make_feats(seed=3)
    batches = ([GTS[0], GTS[1]], [GTS[1], EMPTY], [EMPTY, EMPTY])
    for batch in batches:
        expected = reference.loss_by_feat(*reference(feats), batch, METAS)
        got = ours.loss_by_feat(*ours(feats), batch, METAS)
        assert set(got) == set(expected)
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)
    # and the dynamic mode really is different on the same weights
    dynamic = make_head(**common)
    dynamic.load_state_dict(per_level_state_dict(reference))
    assert dynamic.loss_by_feat(*dynamic(feats), batches[0], METAS)['loss_cls'] != \
        reference.loss_by_feat(*reference(feats), batches[0], METAS)['loss_cls']


def test_bad_assign_mode_is_rejected():
    with pytest.raises(ValueError, match='assign_mode'):
        make_head(assign_mode='atss')


# ---------------------------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------------------------
def reference_predict(cls_scores, bbox_preds, centernesses, img, cfg):
    """sqrt score per (point, class); per level the nms_pre points of best score; pairs above
    score_thr; torchvision class-aware NMS; max_per_img."""
    boxes_all, scores_all, labels_all = [], [], []
    for cls, dist, ctr, s in zip(cls_scores, bbox_preds, centernesses, STRIDES):
        score = (cls[img].sigmoid() * ctr[img].sigmoid()).sqrt()  # (C, H, W)
        score = score.permute(1, 2, 0).reshape(-1, NUM_CLASSES)
        dist = dist[img].permute(1, 2, 0).reshape(-1, 4)
        pts = grid_priors(IMG, s)[:, :2].float()
        if score.size(0) > cfg['nms_pre']:
            keep = score.max(1).values.topk(cfg['nms_pre']).indices
            score, dist, pts = score[keep], dist[keep], pts[keep]
        point, label = (score > cfg['score_thr']).nonzero(as_tuple=True)
        boxes = torch.cat([pts[point] - dist[point, :2], pts[point] + dist[point, 2:]], 1)
        boxes_all.append(boxes.clamp(0, IMG))
        scores_all.append(score[point, label])
        labels_all.append(label)
    boxes, scores, labels = torch.cat(boxes_all), torch.cat(scores_all), torch.cat(labels_all)
    keep = batched_nms(boxes, scores, labels, cfg['nms']['iou_threshold'])[:cfg['max_per_img']]
    return boxes[keep], scores[keep], labels[keep]


def test_predict_sqrt_scores_match_reference():
    test_cfg = dict(nms_pre=40, score_thr=0.3, nms=dict(type='nms', iou_threshold=0.6),
                    max_per_img=25)
    torch.manual_seed(0)
    head = make_head(test_cfg=ConfigDict(test_cfg))  # default (not FCOS) init: spread scores
    head.eval()
    with torch.no_grad():
        outs = head(make_feats(seed=5))
        results = head.predict_by_feat(*outs, batch_img_metas=METAS, rescale=False)
    for img, res in enumerate(results):
        boxes, scores, labels = reference_predict(*outs, img, test_cfg)
        assert 0 < len(res) <= test_cfg['max_per_img']
        assert (res.scores > test_cfg['score_thr']).all()
        assert (res.scores[:-1] >= res.scores[1:]).all()
        torch.testing.assert_close(res.scores, scores)
        torch.testing.assert_close(res.bboxes, boxes)
        assert torch.equal(res.labels, labels)
    # The threshold is on the sqrt score: some class probabilities alone are above it while
    # their sqrt score is not, and vice versa.
    cls, ctr = outs[0][0], outs[2][0]
    sqrt_score = head.score_from_logits(cls.permute(0, 2, 3, 1), ctr[:, 0])
    torch.testing.assert_close(sqrt_score, (cls.sigmoid() * ctr.sigmoid()).sqrt().permute(0, 2, 3, 1))
    assert ((cls.sigmoid().permute(0, 2, 3, 1) > 0.3) != (sqrt_score > 0.3)).any()


def test_predict_config_defaults_and_empty_output():
    head = make_head()
    assert head.test_cfg == dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05,
                                 nms=dict(type='nms', iou_threshold=0.6), max_per_img=100)
    head.init_weights()
    with torch.no_grad():
        head.conv_cls.bias.fill_(-20.0)  # every score below the threshold
        head.eval()
        results = head.predict_by_feat(*head(make_feats()), batch_img_metas=METAS)
    assert all(len(r) == 0 and r.bboxes.shape == (0, 4) for r in results)


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------
def test_parameter_count_and_separable_towers():
    full = MODELS.build(dict(type='TunedFCOSHead', num_classes=80, in_channels=64))
    towers = 2 * 4 * (64 * 64 * 9 + 5 * 2 * 64)  # shared convs (no bias under BN) + BN per level
    predictors = (64 * 80 * 9 + 80) + (64 * 4 * 9 + 4) + (64 * 9 + 1)
    assert sum(p.numel() for p in full.parameters()) == towers + predictors + 5 == 349082
    sep = MODELS.build(dict(type='TunedFCOSHead', num_classes=80, in_channels=64,
                            use_separable=True))
    assert all(isinstance(m, DepthwiseSeparableConvModule)
               for m in [*sep.cls_convs, *sep.reg_convs])
    assert sum(p.numel() for p in sep.parameters()) < 0.3 * 344986
    gn = make_head(norm_cfg=dict(type='GN', num_groups=8, requires_grad=True))
    outs = gn(make_feats())
    assert [o.shape[1] for o in (outs[0][0], outs[1][0], outs[2][0])] == [NUM_CLASSES, 4, 1]
    shared = make_head(norm_per_level=False)
    assert len(shared.cls_norms) == 1 and len(make_head().cls_norms) == len(STRIDES)


def _eval_vs_train_gap(head: TunedFCOSHead, feats) -> float:
    """Largest difference between eval-mode (running statistics) and training-mode (batch
    statistics) class and centerness logits, after the running statistics have seen the inputs."""
    head.train()
    with torch.no_grad():
        trained = head(feats)
        head.eval()
        evaluated = head(feats)
    return max((t - e).abs().max().item() for out in (0, 2)
               for t, e in zip(trained[out], evaluated[out]))


def test_eval_mode_reproduces_training_with_per_level_norms():
    """P3-P7 features have different statistics. Trained with batch statistics, the head is only
    faithful in eval mode if each level has its own BN running statistics (EfficientDet's head);
    one BN shared by all levels (mmdet FCOSHead's layout, norm_per_level=False) learns a mixture.
    This is what made a demo-trained model score 0.01 mAP in eval mode while its batch-statistics
    predictions were right."""
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(8, 16, 64 // 2 ** i, 64 // 2 ** i, generator=g) * (1 + i) + 2 * i
             for i in range(len(STRIDES))]
    bn = dict(type='BN', momentum=None, requires_grad=True)  # cumulative average: exact statistics
    torch.manual_seed(0)
    per_level = _eval_vs_train_gap(make_head(norm_cfg=bn), feats)
    torch.manual_seed(0)
    shared = _eval_vs_train_gap(make_head(norm_cfg=bn, norm_per_level=False), feats)
    assert per_level < 0.05, per_level
    assert shared > 20 * per_level, (shared, per_level)


# ---------------------------------------------------------------------------------------------
# Overfit sanity
# ---------------------------------------------------------------------------------------------
def test_overfits_one_synthetic_image():
    torch.manual_seed(0)
    strides = (8, 16, 32)
    stem = nn.ModuleList([
        nn.Sequential(nn.Conv2d(3, 16, 8, stride=8), nn.ReLU()),
        nn.Sequential(nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU())])
    head = make_head(strides=strides)
    head.init_weights()
    image = torch.randn(1, 3, 64, 64)
    gts = [gt([[6.2, 8.1, 30.4, 40.7], [28.3, 20.5, 60.1, 58.2]], [1, 3])]
    metas = [dict(img_shape=(64, 64))]
    params = [*stem.parameters(), *head.parameters()]
    optim = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    history = []
    for _ in range(40):
        feats, x = [], image
        for block in stem:
            x = block(x)
            feats.append(x)
        losses = head.loss_by_feat(*head(feats), copy.deepcopy(gts), metas)
        total = sum(v for k, v in losses.items() if k.startswith('loss'))
        optim.zero_grad()
        total.backward()
        optim.step()
        history.append(total.item())
    assert history[-1] < 0.5 * history[0], history


# ---------------------------------------------------------------------------------------------
# CUDA (this project's mmcv has no CUDA kernels: nothing here may need them)
# ---------------------------------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_trains_and_predicts_on_cuda_without_mmcv_kernels():
    head = make_head().cuda()
    head.init_weights()
    feats = make_feats()
    gts = [g.to('cuda') for g in GTS]
    # (no CPU comparison: near-equal costs at init may break ties differently on the GPU)
    losses = head.loss_by_feat(*head([f.cuda() for f in feats]), gts, METAS)
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in head.parameters())
    head.eval()
    with torch.no_grad():
        results = head.predict_by_feat(*head([f.cuda() for f in feats]), batch_img_metas=METAS)
    assert all(r.bboxes.is_cuda and len(r) <= 100 for r in results)
