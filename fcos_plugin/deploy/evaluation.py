"""Evaluation and latency of deployed models, shared by ``tools/deploy/test_onnx.py``,
``tools/deploy/quantize_onnx.py`` and ``benchmarks/bench_onnx.py``.

* :func:`evaluate` -- COCO metrics of an ONNX model (mmdeploy's backend model) or a PyTorch model on
  the config's val set, with the config's ``val_evaluator``;
* :func:`latency_input` -- the network input of one real val image, preprocessed exactly as
  :func:`evaluate` preprocesses it (so its size is the one the model is evaluated at);
* :func:`ort_session`, :func:`timed_rounds` and :func:`median_latency_ms` -- ONNX Runtime CPU sessions
  with a fixed thread count, and the times (per round, or the median) of several callables, each timed
  in blocks of its own (an idle ONNX Runtime thread pool spinning after a run slows whatever runs next).

The input size of an ONNX model is checked against its deploy config and ``export_meta.json`` by
:func:`fcos_plugin.deploy.checks.check_input_shape` before anything runs.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from mmengine.config import Config

from .checks import onnx_input_dims, prepare_exported_model
from .common import DeployError, Log, init_scope
from .configs import deploy_cfg_for, load_deploy_cfg, load_model_cfg, static_input_shape
from .data import build_dataloader, static_pipeline

__all__ = ['evaluate', 'latency_input', 'median_latency_ms', 'onnx_latency_fns', 'onnx_latency_ms',
           'median_ms', 'ort_session', 'pytorch_model', 'timed_rounds']


def evaluate(model_cfg: str | Config,
             model: str | torch.nn.Module,
             deploy_cfg: str | Config | None = None,
             num_images: int | None = None,
             batch_size: int | None = None,
             log: Log = print) -> dict[str, float]:
    """COCO metrics of an ONNX model (path) or a PyTorch detector on the config's val set.

    ONNX models run through mmdeploy's backend model (ONNX Runtime, same data preprocessor,
    boxes divided by ``scale_factor``); the metric is the config's ``val_evaluator``.

    Args:
        model_cfg: model config.
        model: ``.onnx`` path, or an mmdet detector in eval mode.
        deploy_cfg: the deploy config of the ONNX model (its static shape decides the pipeline);
            by default the ``deploy_cfg.py`` exported next to it.
        num_images: evaluate the first N images only.
        batch_size: overrides the config's val batch size; a model with a static batch size (every
            static export) is run at that size by default.

    Returns:
        dict[str, float]: the evaluator's metrics (e.g. ``coco/bbox_mAP``).

    Raises:
        DeployError: missing or invalid model, an input size that contradicts the deploy config or
            ``export_meta.json``, a batch size the model cannot take, or an unreadable val set.
    """
    from mmdeploy.apis import build_task_processor
    from mmengine.evaluator import Evaluator
    if isinstance(model, str):
        model_cfg, deploy_cfg, _ = prepare_exported_model(model_cfg, model, deploy_cfg)
        static_batch = onnx_input_dims(model)[0]
        if isinstance(static_batch, int):
            if batch_size is not None and batch_size != static_batch:
                raise DeployError(f'--batch-size {batch_size}: {model} has a static batch size of '
                                  f'{static_batch}')
            batch_size = static_batch
        task = build_task_processor(copy.deepcopy(model_cfg), deploy_cfg, 'cpu')
        runner_model = task.build_backend_model([model])
    else:
        init_scope()
        model_cfg = load_model_cfg(model_cfg)
        deploy_cfg = load_deploy_cfg(deploy_cfg)
        runner_model = model
    pipeline = static_pipeline(model_cfg.val_dataloader.dataset.pipeline,
                                static_input_shape(deploy_cfg))
    loader = build_dataloader(model_cfg, 'val', pipeline, batch_size, num_images)
    evaluator = Evaluator(copy.deepcopy(model_cfg.val_evaluator))
    evaluator.dataset_meta = loader.dataset.metainfo
    t0 = time.time()
    with torch.no_grad():
        for data in loader:
            evaluator.process(data_samples=runner_model.test_step(data), data_batch=data)
    metrics = evaluator.evaluate(len(loader.dataset))
    log(f'evaluated {len(loader.dataset)} images in {time.time() - t0:.1f} s')
    return {k: float(v) if isinstance(v, (int, float, np.floating)) else v
            for k, v in metrics.items()}


def latency_input(model_cfg: str | Config,
                  model: str,
                  deploy_cfg: str | Config | None = None,
                  shape: tuple[int, int] | None = None) -> tuple[torch.Tensor, list]:
    """The first val image as an ONNX model sees it in :func:`evaluate`: ``(inputs, data_samples)``.

    The image goes through the config's val pipeline -- rewritten by mmdeploy for the deploy
    config's static input size, as in :func:`evaluate` -- and the model's data preprocessor. The
    model's input size is checked first (:func:`~fcos_plugin.deploy.checks.check_input_shape`), so this
    is also the quick check to run before anything expensive.

    Args:
        model_cfg: model config (its val set, val pipeline and data preprocessor).
        model: the ``.onnx`` model the input is for.
        deploy_cfg: its deploy config; by default the ``deploy_cfg.py`` exported next to it.
        shape: (height, width): resize to this size instead, as a static deploy config of that size
            would (a dynamic model, or a static one of exactly that size).

    Returns:
        tuple: ``inputs`` (1, 3, H, W) float32 and the preprocessed ``data_samples`` (whose metainfo
        has what PyTorch's ``predict`` needs: ``img_shape``, ``batch_input_shape``...).

    Raises:
        DeployError: the model, its deploy config, ``export_meta.json`` and ``shape`` disagree, or the
            val set is empty or unreadable.
    """
    from mmdet.registry import MODELS
    model_cfg, deploy_cfg, static_hw = prepare_exported_model(model_cfg, model, deploy_cfg, check_ops=False)
    if shape is not None:
        shape = (int(shape[0]), int(shape[1]))
        if static_hw is not None and shape != static_hw:
            raise DeployError(f'{model} takes {static_hw[0]}x{static_hw[1]} inputs, not '
                              f'{shape[0]}x{shape[1]} (height x width)')
        wh = [shape[1], shape[0]]
    else:
        wh = static_input_shape(deploy_cfg)
    pipeline = static_pipeline(model_cfg.val_dataloader.dataset.pipeline, wh)
    loader = build_dataloader(model_cfg, 'val', pipeline, batch_size=1, num_images=1)
    if len(loader.dataset) == 0:
        raise DeployError(f'no images in the val set of {model_cfg.filename}')
    preprocessor = MODELS.build(copy.deepcopy(model_cfg.model.data_preprocessor))
    with torch.no_grad():
        data = preprocessor(next(iter(loader)), False)
    inputs = data['inputs']
    if wh is not None and list(inputs.shape[2:]) != list(wh[::-1]):
        raise DeployError(f'the val pipeline of {model_cfg.filename} gives {list(inputs.shape[2:])} '
                          f'inputs, not {wh[1]}x{wh[0]} (height x width)')
    return inputs, data['data_samples']


def ort_session(model: str, threads: int = 2):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads and one inter-op thread."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=['CPUExecutionProvider'])


def timed_rounds(fns: dict[str, Callable[[], object]], runs: int = 10, warmup: int = 2,
                 rounds: int = 2) -> dict[str, list[list[float]]]:
    """Wall times in seconds of each callable, per round: ``{name: [[round 0 times], ...]}``.

    An ONNX Runtime session's intra-op thread pool keeps spinning for a while after each ``run``, so
    callables timed run by run, interleaved, slow each other down (the same float model: ~24 ms alone,
    ~47 ms interleaved with an int8 one on the 2-core machine of benchmarks/RESULTS.md). Each callable
    therefore runs in a block: ``warmup`` untimed runs, then its timed runs; the blocks of all callables
    alternate over ``rounds`` rounds (the order reversed every other round), so slow drift of the
    machine hits them alike, and a ratio of two callables can be taken round by round. ``runs`` timed
    runs in all, split over the rounds.
    """
    if runs < 1:
        raise ValueError(f'runs must be >= 1, got {runs}')
    rounds = max(1, min(rounds, runs))
    times: dict[str, list[list[float]]] = {name: [] for name in fns}
    items = list(fns.items())
    with torch.no_grad():
        for r in range(rounds):
            n = runs // rounds + (1 if r < runs % rounds else 0)
            for name, fn in (items if r % 2 == 0 else items[::-1]):
                for _ in range(warmup):
                    fn()
                block = []
                for _ in range(n):
                    t0 = time.perf_counter()
                    fn()
                    block.append(time.perf_counter() - t0)
                times[name].append(block)
    return times


def median_latency_ms(fns: dict[str, Callable[[], object]], runs: int = 10,
                      warmup: int = 2, rounds: int = 2) -> dict[str, float]:
    """Median wall time in milliseconds of each callable over all its runs, each callable timed in
    blocks of its own (:func:`timed_rounds`)."""
    return median_ms(timed_rounds(fns, runs, warmup, rounds))


def median_ms(times: dict[str, list[list[float]]]) -> dict[str, float]:
    """Median in milliseconds over all rounds of :func:`timed_rounds`' seconds, per callable."""
    return {name: 1000 * float(np.median(sum(blocks, []))) for name, blocks in times.items()}


def onnx_latency_fns(models: dict[str, str], x: np.ndarray, threads: int = 2) -> dict[str, Callable]:
    """One callable per named ONNX model that runs it on ``x`` in its own ONNX Runtime session.

    Raises:
        DeployError: ``x`` is not of a shape a model takes (its static input dimensions).
    """
    fns = {}
    for name, path in models.items():
        dims = onnx_input_dims(path)
        if any(isinstance(d, int) and d != s for d, s in zip(dims, x.shape)) or len(dims) != x.ndim:
            raise DeployError(f'{path} takes inputs of shape {_dims_str(dims)}, not {list(x.shape)}')
        fns[name] = lambda s=ort_session(path, threads): s.run(None, {'input': x})
    return fns


def onnx_latency_ms(models: dict[str, str], x: np.ndarray, threads: int = 2,
                    runs: int = 10) -> dict[str, float]:
    """Median ONNX Runtime latency (ms) of each named ONNX model on the same input ``x``, each model
    timed in blocks of its own (:func:`median_latency_ms`).

    Raises:
        DeployError: ``x`` is not of a shape a model takes (its static input dimensions).
    """
    return median_latency_ms(onnx_latency_fns(models, x, threads), runs)


def pytorch_model(model_cfg: str | Config, checkpoint: str, model: str,
                  deploy_cfg: str | Config | None = None) -> torch.nn.Module:
    """The PyTorch detector of ``checkpoint`` as mmdeploy builds it for the deploy config of ``model``
    (the ``.onnx`` file), in eval mode: what :func:`evaluate` and the latency compare with."""
    from mmdeploy.apis import build_task_processor

    from ..engine import safe_checkpoint_loading
    init_scope()
    task = build_task_processor(copy.deepcopy(load_model_cfg(model_cfg)), deploy_cfg_for(model, deploy_cfg),
                                'cpu')
    with safe_checkpoint_loading(checkpoint):
        return task.build_pytorch_model(checkpoint)


def _dims_str(dims: Sequence[int | str | None]) -> str:
    return '[' + ', '.join(str(d) if isinstance(d, int) else '?' for d in dims) + ']'

