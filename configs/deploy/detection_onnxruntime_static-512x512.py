# Static 1x3x512x512 input: the test pipeline resizes to 512x512 without keeping the aspect ratio
# (mmdeploy replaces Resize/Pad sizes by input_shape, which is (width, height)).
_base_ = ['./_base_onnxruntime.py']
onnx_config = dict(input_shape=[512, 512])
