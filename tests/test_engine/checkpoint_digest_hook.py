"""Test-only hook (imported by the full-disk test through ``custom_imports``): after each checkpoint the
CheckpointHook saved, appends ``{"path": ..., "sha256": ...}`` of it to the JSON-lines file ``out``, which
lies outside the (small) file system the checkpoints go to."""
from __future__ import annotations

import hashlib
import json

from mmdet.registry import HOOKS
from mmengine.hooks import Hook


@HOOKS.register_module()
class RecordCheckpointDigestHook(Hook):
    priority = 'LOWEST'  # after CheckpointHook (VERY_LOW) has saved the epoch's checkpoint

    def __init__(self, out: str) -> None:
        self.out = out

    def after_train_epoch(self, runner) -> None:
        path = runner.message_hub.get_info('last_ckpt')
        with open(path, 'rb') as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        with open(self.out, 'a') as f:
            f.write(json.dumps(dict(path=path, sha256=digest)) + '\n')
