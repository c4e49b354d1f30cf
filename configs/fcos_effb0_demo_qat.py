# Quantization-aware training (QAT) of the demo model: fcos_effb0_demo.py's detector as QATFCOS
# (fcos_plugin/quantization/: BN folded into int8 per-channel weights, uint8 activations at every
# point ONNX Runtime runs int8, the head's output convs float), its activation ranges calibrated on
# 32 train images before training (QATCalibrationHook, min/max), then a short fine-tune from the float
# checkpoint -- the schedule of fcos_effb0_demo_finetune.py, its float twin:
#   python tools/train.py configs/fcos_effb0_demo_qat.py --cfg-options load_from=FLOAT_CKPT
# (FLOAT_CKPT: e.g. work_dirs/fcos_effb0_demo/best_coco_bbox_mAP_iter_*.pth), then
#   python tools/test.py configs/fcos_effb0_demo_qat.py QAT_CKPT              (simulated int8)
#   python tools/deploy/export_onnx.py --config configs/fcos_effb0_demo_qat.py --ckpt QAT_CKPT \
#       --onnx-name fcos_qat.onnx                                            (QDQ int8 ONNX model)
_base_ = './fcos_effb0_demo_finetune.py'

model = dict(type='QATFCOS', qat_cfg=dict(range_momentum=0.0))
custom_hooks = [dict(type='ChannelsLastHook'),
                dict(type='QATCalibrationHook', num_images=32, batch_size=8)]
