"""What int8 quantization takes as "the network" (``fcos_plugin.deploy.quantization.network_nodes``), on a
small hand-built graph with every kind of node the exported detector has: convolutions, an activation, a
residual addition, a resize, shape arithmetic, the head's output convolution and post-processing."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fcos_plugin.deploy import network_nodes


def _graph() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = {name: numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), name)
         for name in ('w1', 'w2', 'w_head')}
    const = [numpy_helper.from_array(np.array([1, 1, 2, 2], np.int64), 'factors'),
             numpy_helper.from_array(np.array([2], np.int64), 'axis2'),
             numpy_helper.from_array(np.array([1], np.int64), 'one')]
    nodes = [
        helper.make_node('Shape', ['input'], ['shape'], name='shape'),
        helper.make_node('Gather', ['shape', 'axis2'], ['h'], name='shape/gather'),
        helper.make_node('Add', ['h', 'one'], ['h1'], name='shape/add'),  # int64 arithmetic
        helper.make_node('Conv', ['input', 'w1'], ['c1'], name='backbone/conv1', pads=[1, 1, 1, 1]),
        helper.make_node('Relu', ['c1'], ['r1'], name='backbone/relu'),
        helper.make_node('Conv', ['r1', 'w2'], ['c2'], name='backbone/conv2', pads=[1, 1, 1, 1]),
        helper.make_node('Add', ['c2', 'r1'], ['res'], name='backbone/add'),
        # the resize target computed from the input's shape (int64), as the BiFPN's is
        helper.make_node('Shape', ['res'], ['res_shape'], name='neck/shape'),
        helper.make_node('Mul', ['res_shape', 'factors'], ['sizes'], name='neck/sizes'),
        helper.make_node('Resize', ['res', '', '', 'sizes'], ['up'], name='neck/resize', mode='nearest'),
        helper.make_node('Conv', ['up', 'w_head'], ['logits'], name='head/conv_cls', pads=[1, 1, 1, 1]),
        helper.make_node('Sigmoid', ['logits'], ['probs'], name='post/sigmoid'),
        helper.make_node('Unsqueeze', ['h1', 'one'], ['h2'], name='post/unsqueeze'),
    ]
    graph = helper.make_graph(
        nodes, 'g', [helper.make_tensor_value_info('input', TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info('probs', TensorProto.FLOAT, [1, 4, 16, 16]),
         helper.make_tensor_value_info('h2', TensorProto.INT64, [1, 1])], initializer=[*w.values(), *const])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 13)])
    onnx.checker.check_model(model)
    return model


def test_network_is_everything_up_to_the_last_convolutions():
    model = _graph()
    network = ['backbone/conv1', 'backbone/relu', 'backbone/conv2', 'backbone/add', 'neck/resize']
    # the head's output convolution is float by default; shape arithmetic and post-processing always
    assert network_nodes(model) == network
    assert network_nodes(model, float_head_outputs=False) == [*network, 'head/conv_cls']


def test_exclude_and_op_types():
    model = _graph()
    assert network_nodes(model, exclude=('backbone/',)) == ['neck/resize']
    assert network_nodes(model, exclude=('neck/resize',), float_head_outputs=False) == [
        'backbone/conv1', 'backbone/relu', 'backbone/conv2', 'backbone/add', 'head/conv_cls']
    assert network_nodes(model, op_types=('Conv',), float_head_outputs=False) == [
        'backbone/conv1', 'backbone/conv2', 'head/conv_cls']
