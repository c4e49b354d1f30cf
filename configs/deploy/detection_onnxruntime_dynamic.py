# Dynamic batch, height and width (the default of tools/deploy/export_onnx.py).
_base_ = ['./_base_onnxruntime.py']
onnx_config = dict(
    dynamic_axes={
        'input': {0: 'batch', 2: 'height', 3: 'width'},
        'dets': {0: 'batch', 1: 'num_dets'},
        'labels': {0: 'batch', 1: 'num_dets'},
    })
