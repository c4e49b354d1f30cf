"""The config's images as deployed models see them: mmdeploy's rewrite of the test pipeline for a static
input size, and the ``train``/``val`` dataloaders that evaluation and int8 calibration read."""
from __future__ import annotations

import copy

from mmengine.config import Config

from .common import DeployError

__all__ = ['build_dataloader', 'static_pipeline']


def static_pipeline(pipeline: list, input_shape: list[int] | None) -> list:
    """mmdeploy's own rewrite of a test pipeline for a static input (Resize/Pad to ``input_shape``,
    (width, height)); the pipeline unchanged for dynamic shapes (``None``)."""
    from mmdeploy.codebase.mmdet.deploy.object_detection import process_model_config
    if input_shape is None:
        return pipeline
    tmp = Config(dict(test_pipeline=copy.deepcopy(pipeline)))
    return list(process_model_config(tmp, [''], input_shape).test_pipeline)


def build_dataloader(model_cfg: Config, split: str, pipeline: list,
                     batch_size: int | None = None, num_images: int | None = None):
    """The config's ``train``/``val`` dataloader with ``pipeline``, in order, without workers
    (the train set unfiltered, for calibration); the first ``num_images`` images if given.

    Raises:
        DeployError: the data cannot be opened (names the split and the config).
    """
    from mmengine.runner import Runner
    dl = copy.deepcopy(model_cfg[f'{split}_dataloader'])
    dl.dataset.pipeline = pipeline
    if num_images is not None:
        dl.dataset.indices = num_images  # mmengine's BaseDataset takes a count: the first N
    if batch_size is not None:
        dl.batch_size = batch_size
    dl.num_workers = 0  # the LMDB reads are cheap; workers would copy the process
    dl.persistent_workers = False
    dl.pop('batch_sampler', None)
    dl.sampler = dict(type='DefaultSampler', shuffle=False)
    if split == 'train':
        dl.dataset.test_mode = True  # keep every image, no annotation filtering for calibration
        dl.dataset.pop('filter_cfg', None)
    try:
        return Runner.build_dataloader(dl)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise DeployError(f'cannot open the {split} set of {model_cfg.filename}: '
                          f'{str(e).splitlines()[0]}') from None
