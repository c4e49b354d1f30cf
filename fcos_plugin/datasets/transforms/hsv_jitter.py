"""HSV colour jitter with multiplicative gains, as in HAT's / YOLOv5's ``augment_hsv``.

mmdet's ``YOLOXHSVRandomAug`` draws additive deltas; HAT's recipe is written as gains
(hue 0.015, saturation 0.7, value 0.4): each channel is multiplied by ``1 + U(-gain, gain)``.
"""
from __future__ import annotations

import cv2
import numpy as np
from mmcv.transforms import BaseTransform
from mmdet.registry import TRANSFORMS


@TRANSFORMS.register_module()
class HSVJitter(BaseTransform):
    """Random HSV gains on a BGR uint8 image (``results['img']``); boxes are unchanged.

    Follows mmyolo's ``YOLOv5HSVRandomAug`` (same gains ``1 + U(-1, 1) * delta`` and lookup tables),
    which mmdet does not ship; kept here so the plugin does not depend on mmyolo.

    Args:
        hgain, sgain, vgain: maximum relative change of hue, saturation and value.
    """

    def __init__(self, hgain: float = 0.015, sgain: float = 0.7, vgain: float = 0.4) -> None:
        self.gains = np.array([hgain, sgain, vgain], np.float64)

    def transform(self, results: dict) -> dict:
        img = results['img']
        r = np.random.uniform(-1, 1, 3) * self.gains + 1
        hue, sat, val = cv2.split(cv2.cvtColor(img, cv2.COLOR_BGR2HSV))
        x = np.arange(0, 256, dtype=np.float64)
        lut_hue = ((x * r[0]) % 180).astype(np.uint8)  # OpenCV hue range is [0, 180)
        lut_sat = np.clip(x * r[1], 0, 255).astype(np.uint8)
        lut_val = np.clip(x * r[2], 0, 255).astype(np.uint8)
        hsv = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val)))
        results['img'] = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
        return results

    def __repr__(self) -> str:
        h, s, v = self.gains
        return f'{self.__class__.__name__}(hgain={h}, sgain={s}, vgain={v})'
