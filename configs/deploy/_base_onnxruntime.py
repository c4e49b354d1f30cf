# mmdeploy detection -> ONNX Runtime, end-to-end graph with NMS inside (standard ONNX ops only).
# The mmdeploy wheel ships no configs; this is its detection/_base_ + onnx_config + onnxruntime.
onnx_config = dict(
    type='onnx',
    export_params=True,
    keep_initializers_as_inputs=False,  # lets ONNX Runtime fold BN and quantize the weights
    opset_version=13,  # per-channel int8 (QDQ) needs >= 13
    save_file='end2end.onnx',  # fcos_plugin.deploy.export_onnx sets it from onnx_name
    input_names=['input'],
    output_names=['dets', 'labels'],
    input_shape=None,
    optimize=False)
codebase_config = dict(
    type='mmdet',
    task='ObjectDetection',
    model_type='end2end',
    # mmdeploy imports these itself, so its own tools/deploy.py and apis.torch2onnx get the plugin's
    # rewriters (TunedFCOSHead's score and thresholds) without anyone importing fcos_plugin.deploy
    module=['fcos_plugin.deploy'],
    # For TunedFCOSHead the model's test_cfg wins (fcos_plugin/deploy/rewriters.py): score_thr,
    # nms iou_threshold, nms_pre, max_per_img and min_bbox_size come from it, and no pre_top_k /
    # per-class cap is applied, so the graph keeps exactly what PyTorch keeps.
    post_processing=dict(
        score_threshold=0.05,
        confidence_threshold=0.005,
        iou_threshold=0.6,
        max_output_boxes_per_class=100,
        pre_top_k=-1,
        keep_top_k=100,
        background_label_id=-1))
backend_config = dict(type='onnxruntime')
