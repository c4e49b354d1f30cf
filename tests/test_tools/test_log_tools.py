"""Training logs work with mmdet's log tools and with TensorBoard.

Guards: ``tools/analysis_tools/analyze_logs.py`` (mmdet's ``plot_curve`` / ``cal_train_time`` on our
``vis_data/*.json``) draws a real training log and times it as the log says; an iteration-based log with
several validations (every demo run: mmdet's own script fails on it) is grouped by validation, with mAP
at the iteration it was measured; an epoch-based log is read by mmdet's own reader; and
``--cfg-options "visualizer.vis_backends=[dict(...),dict(type='TensorboardVisBackend')]"`` reaches the
visualizer (mmengine's ``DictAction`` alone leaves ``dict(...)`` as a string).
"""
from __future__ import annotations

import glob
import importlib.util
import json
import os.path as osp
import re
import subprocess

import numpy as np
import pytest

from ..conftest import REPO, run_tool

TOOL = 'tools/analysis_tools/analyze_logs.py'


def load_wrapper():
    spec = importlib.util.spec_from_file_location('fcos_analyze_logs', osp.join(REPO, TOOL))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_analyze(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(run_tool(TOOL, *args), capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def assert_picture(path: str) -> None:
    import cv2
    img = cv2.imread(path)
    assert img is not None, f'{path} is not a readable picture'
    assert img.shape[0] > 100 and img.shape[1] > 100 and img.std() > 5, img.shape


def write_log(path, records: list[dict]) -> str:
    with open(path, 'w') as f:
        f.writelines(json.dumps(r) + '\n' for r in records)
    return str(path)


def train_record(step: int, loss: float, time: float, epoch: int | None = None) -> dict:
    """A training line as mmengine's LoggerHook writes it (keys of a real demo run)."""
    r = dict(base_lr=1e-3, lr=1e-3, data_time=0.03, grad_norm=8.0, loss=loss, loss_cls=loss / 2,
             loss_bbox=loss / 4, loss_centerness=loss / 4, time=time)
    if epoch is not None:
        r['epoch'] = epoch
    return r | dict(iter=step, step=step)


def val_record(step: int, m_ap: float) -> dict:
    return {'coco/bbox_mAP': m_ap, 'coco/bbox_mAP_50': 2 * m_ap, 'data_time': 0.02, 'time': 0.9,
            'step': step}


def test_plot_curve_and_train_time_on_demo_training(demo_trained, tmp_path):
    """The real log of the demo config (iteration-based, 100 iterations, validated at the end)."""
    log = sorted(glob.glob(osp.join(demo_trained['work_dir'], '2*', 'vis_data', 'scalars.json')))[-1]
    out = str(tmp_path / 'curve.png')
    proc = run_analyze('plot_curve', log, '--keys', 'loss', 'coco/bbox_mAP', '--out', out)
    assert f'save curve to: {out}' in proc.stdout
    assert_picture(out)

    proc = run_analyze('cal_train_time', log)
    times = [r['time'] for r in demo_trained['log'] if 'loss' in r]
    # one stretch (one validation, at the end); mmdet leaves out its first value as an outlier
    assert 'ending at iterations [100]' in proc.stdout, proc.stdout
    average = float(re.search(r'average iter time: ([\d.]+) s/iter', proc.stdout).group(1))
    assert average == pytest.approx(np.mean(times[1:]), abs=1e-4), (proc.stdout, times)
    proc = run_analyze('cal_train_time', log, '--include-outliers')
    average = float(re.search(r'average iter time: ([\d.]+) s/iter', proc.stdout).group(1))
    assert average == pytest.approx(np.mean(times), abs=1e-4), (proc.stdout, times)


@pytest.mark.parametrize('val_step', ['iteration', 'zero'])
def test_iteration_log_with_several_validations(tmp_path, val_step):
    """Validations at 40 and 80, then training to 100. ``zero``: a run logged with
    ``log_metric_by_epoch=True`` writes step 0 for its validations."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    records = [train_record(s, 2.0 - s / 100, 1.0 + s / 1000) for s in (20, 40)]
    records += [val_record(40 if val_step == 'iteration' else 0, 0.1)]
    records += [train_record(s, 2.0 - s / 100, 1.0 + s / 1000) for s in (60, 80)]
    records += [val_record(80 if val_step == 'iteration' else 0, 0.3)]
    records += [train_record(100, 1.0, 1.1)]
    log = write_log(tmp_path / 'scalars.json', records)
    wrapper = load_wrapper()
    log_dict = wrapper.load_iteration_log(records)
    assert list(log_dict) == [40, 80, 100]
    assert [log_dict[k]['bbox_mAP'] for k in log_dict] == [[0.1], [0.3], []]
    assert [log_dict[k]['step'] for k in log_dict] == [[20, 40], [60, 80], [100]]

    # why the wrapper exists: mmdet's reader puts the whole run in "epoch 1" and cannot draw it
    mmdet_tool = wrapper.load_mmdet_tool()
    raw = mmdet_tool.load_json_logs([log])[0]
    assert list(raw) == [1] and raw[1]['bbox_mAP'] == [0.1, 0.3]
    args = wrapper.parse_args(['plot_curve', log, '--keys', 'bbox_mAP', '--out', str(tmp_path / 'x.png')])
    with pytest.raises(ValueError, match='same first dimension'):
        mmdet_tool.plot_curve([raw], args)
    plt.close('all')

    # through the wrapper: mAP at the iterations it was measured, loss at every logged iteration
    wrapper.main(['plot_curve', log, '--keys', 'loss', 'coco/bbox_mAP', '--backend', 'Agg'])
    try:
        ax = plt.gca()
        lines = {line.get_label(): line for line in ax.get_lines()}  # mmdet's legend: f'{log}_{key}'
        m_ap, loss = lines[f'{log}_bbox_mAP'], lines[f'{log}_loss']
        assert list(m_ap.get_xdata()) == [40, 80] and list(m_ap.get_ydata()) == [0.1, 0.3]
        assert list(loss.get_xdata()) == [20, 40, 60, 80, 100]
        assert ax.get_xlabel() == 'iter'
    finally:
        plt.close('all')
    out = str(tmp_path / 'curve.png')
    run_analyze('plot_curve', log, '--keys', 'loss', 'coco/bbox_mAP', '--out', out)
    assert_picture(out)


def test_epoch_log_is_read_by_mmdet(tmp_path):
    """An epoch-based log (records carry ``epoch``; validations logged at step = epoch) goes through
    mmdet's own reader and plots."""
    records = []
    for epoch in (1, 2, 3):
        steps = range(3 * epoch - 2, 3 * epoch + 1)
        records += [train_record(s, 2.0 - s / 10, 1.0, epoch=epoch) for s in steps]
        records += [val_record(epoch, 0.1 * epoch)]
    log = write_log(tmp_path / 'scalars.json', records)
    wrapper = load_wrapper()
    assert not wrapper.is_iteration_based(records)
    raw = wrapper.load_mmdet_tool().load_json_logs([log])[0]
    assert [raw[k]['bbox_mAP'] for k in raw] == [[pytest.approx(0.1 * e)] for e in (1, 2, 3)]
    out = str(tmp_path / 'curve.png')
    run_analyze('plot_curve', log, '--keys', 'loss', 'bbox_mAP', '--out', out)
    assert_picture(out)
    proc = run_analyze('cal_train_time', log)
    assert 'average iter time: 1.0000 s/iter' in proc.stdout and 'iteration-based' not in proc.stdout


def test_wrapper_has_mmdets_options():
    """Every option of mmdet's analyze_logs.py is accepted, with mmdet's default."""
    wrapper = load_wrapper()
    mmdet_tool = wrapper.load_mmdet_tool()
    import argparse
    for task, add in (('plot_curve', mmdet_tool.add_plot_parser),
                      ('cal_train_time', mmdet_tool.add_time_parser)):
        parser = argparse.ArgumentParser()
        add(parser.add_subparsers(dest='task'))
        theirs = vars(parser.parse_args([task, 'a.json']))
        ours = vars(wrapper.parse_args([task, 'a.json']))
        assert theirs == ours


def test_literal_dicts():
    from fcos_plugin.utils import literal_dicts
    tensorboard = "dict(type='TensorboardVisBackend', save_dir='tb', x=dict(k=(1, -2)))"
    opts = {'visualizer.vis_backends': ["dict(type='LocalVisBackend')", tensorboard],
            'train_cfg.max_iters': 4, 'work_dir': 'dict_of_words', 'a': ('x', "dict(b=None)")}
    assert literal_dicts(opts) == {
        'visualizer.vis_backends': [dict(type='LocalVisBackend'),
                                    dict(type='TensorboardVisBackend', save_dir='tb', x=dict(k=(1, -2)))],
        'train_cfg.max_iters': 4, 'work_dir': 'dict_of_words', 'a': ('x', dict(b=None))}
    assert literal_dicts(None) is None
    with pytest.raises(ValueError, match='not a literal'):
        literal_dicts({'a': 'dict(type=TensorboardVisBackend)'})


def test_tensorboard_backend_from_cfg_options(demo_trained, tmp_path):
    """tools/train.py with TensorBoard added through ``--cfg-options``: the event file holds the same
    training scalars as ``scalars.json`` (steps and values)."""
    root = demo_trained['data_root']
    work = str(tmp_path / 'work')
    opts = [f'{k}_dataloader.dataset.data_root={root}/' for k in ('train', 'val', 'test')]
    opts += [f'{k}_dataloader.dataset.indices=8' for k in ('train', 'val', 'test')]
    opts += ['train_dataloader.batch_size=4', 'train_cfg.max_iters=2', 'train_cfg.val_interval=2',
             'default_hooks.logger.interval=1', 'default_hooks.checkpoint.save_best=None',
             "visualizer.vis_backends=[dict(type='LocalVisBackend'),dict(type='TensorboardVisBackend')]"]
    proc = subprocess.run(run_tool('tools/train.py', osp.join(REPO, 'configs', 'fcos_effb0_demo.py'),
                                   '--work-dir', work, '--cfg-options', *opts),
                          capture_output=True, text=True, cwd=REPO)
    output = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'vis_backends must be a list of dicts' not in output
    assert proc.returncode == 0, output  # tensorboard is pinned (requirements/pinned.txt)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    vis_data = glob.glob(osp.join(work, '2*', 'vis_data'))[-1]
    with open(osp.join(vis_data, 'scalars.json')) as f:
        train = [r for r in map(json.loads, f) if 'loss' in r]
    events = EventAccumulator(vis_data)
    events.Reload()
    for key in ('loss', 'loss_cls', 'lr'):
        logged = [(e.step, e.value) for e in events.Scalars(key)]
        assert [s for s, _ in logged] == [r['step'] for r in train]
        assert [v for _, v in logged] == pytest.approx([r[key] for r in train], rel=1e-6)
