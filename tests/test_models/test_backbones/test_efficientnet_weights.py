"""EffNet's ``init_cfg=dict(type='Pretrained', checkpoint=...)`` read through mmengine's
``CheckpointLoader``: the alias and local files give the same tensors and key accounting as before,
URLs and ``torchvision://`` names fail clearly without network (and load from the cache), and a
checkpoint that carries code or is no checkpoint at all is refused with the messages every other
loading path gives. Real mmengine, real files; nothing is mocked.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import torchvision
from mmengine.logging import MMLogger

import fcos_plugin  # noqa: F401  (registers EffNet, applies the checkpoint fixes of compat)
from fcos_plugin.engine import CorruptCheckpointError, UnsafeCheckpointError, checkpoint_format_problem
from fcos_plugin.models.backbones import EffNet, efficientnet, efficientnet_weights
from fcos_plugin.models.backbones.efficientnet import efficientnet_spec
from fcos_plugin.models.backbones.efficientnet_weights import (
    CheckpointDownloadError,
    convert_lukemelas_efficientnet,
    efficientnet_lite0_checkpoint,
)

LITE0_BACKBONE_MESSAGE = ('EffNet(lite0): loaded 288 of the 296 tensors of {}; num_classes is None, '
                          'so its 8 classifier tensors (conv_head, fc) were dropped')
TORCHVISION_B0_URL = 'https://download.pytorch.org/models/efficientnet_b0_rwightman-7f5810bc.pth'


@pytest.fixture(autouse=True, scope='module')
def _one_thread():
    """Tiny tensors: one thread is faster than two on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@contextmanager
def _log_messages() -> Iterator[list[str]]:
    """Messages logged through mmengine's current logger (what ``print_log(logger='current')`` and
    ``CheckpointLoader`` write) while the block runs."""
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def _lite0_reference(num_classes: int | None) -> dict[str, torch.Tensor]:
    """What the shipped Lite0 file holds in EffNet's layout, read without EffNet's loader."""
    state = torch.load(efficientnet_lite0_checkpoint(), map_location='cpu', weights_only=True)
    converted = convert_lukemelas_efficientnet(state, [len(s) for s in efficientnet_spec('lite0').stages])
    if num_classes is None:
        converted = {k: v for k, v in converted.items() if not k.startswith(('conv_head.', 'fc.'))}
    return converted


def _assert_loaded(model: EffNet, reference: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    assert own.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(own[key], value), key


def _closed_port() -> int:
    """A local TCP port nothing listens on: connecting to it fails at once, like a machine without
    network access, whether or not this machine has one."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _online(host: str = 'download.pytorch.org') -> bool:
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    """torch hub's cache (where downloads land) in an empty directory of this test."""
    home = tmp_path / 'torch_home'
    monkeypatch.setenv('TORCH_HOME', str(home))
    assert torch.hub.get_dir() == str(home / 'hub')
    return home / 'hub' / 'checkpoints'


# ---- same results as before, now through CheckpointLoader -------------------------------------
def test_alias_loads_through_checkpoint_loader_with_the_same_tensors_and_accounting():
    """Guards: the alias resolves to the bundled file, mmengine's CheckpointLoader reads it, and the
    tensors and the key accounting line are those of the loader before the move (fails if the file is
    read some other way, or a tensor or the message changes)."""
    path = efficientnet_lite0_checkpoint()
    model = EffNet('lite0', init_cfg=dict(type='Pretrained', checkpoint='efficientnet-lite0'))
    with _log_messages() as messages:
        model.init_weights()
    assert f'Loads checkpoint by local backend from path: {path}' in messages
    assert LITE0_BACKBONE_MESSAGE.format(path) in messages
    _assert_loaded(model, _lite0_reference(None))


def test_local_path_loads_through_checkpoint_loader_with_the_same_tensors_and_accounting(tmp_path):
    """A copy of the file given by path: the same tensors (classifier included) and every key used."""
    path = str(tmp_path / 'lite0 copy.pth')
    shutil.copy(efficientnet_lite0_checkpoint(), path)
    model = EffNet('lite0', num_classes=1000, init_cfg=dict(type='Pretrained', checkpoint=path))
    with _log_messages() as messages:
        model.init_weights()
    assert f'Loads checkpoint by local backend from path: {path}' in messages
    assert f'EffNet(lite0): loaded all 296 tensors of {path}' in messages
    _assert_loaded(model, _lite0_reference(1000))


def test_moved_names_keep_their_old_import_path():
    """Code that imported the converters and the exact loader from ``efficientnet`` still works."""
    for name in ('PRETRAINED_ALIASES', 'convert_lukemelas_efficientnet', 'convert_torchvision_efficientnet',
                 'efficientnet_lite0_checkpoint', 'load_state_dict_exact', 'resolve_checkpoint'):
        assert getattr(efficientnet, name) is getattr(efficientnet_weights, name), name


# ---- remote checkpoints on a machine without network ------------------------------------------
def test_url_without_network_names_the_url_and_the_local_file_way(empty_torch_home):
    """Guards the offline message: a raw ``URLError`` (no URL, no advice) fails this test."""
    url = f'http://127.0.0.1:{_closed_port()}/weights/lite0-1234.pth'
    model = EffNet('lite0', init_cfg=dict(type='Pretrained', checkpoint=url))
    with pytest.raises(CheckpointDownloadError) as info:
        model.init_weights()
    message = str(info.value)
    assert url in message and 'offline' in message
    assert "checkpoint='/path/to/lite0-1234.pth'" in message
    assert str(empty_torch_home / 'lite0-1234.pth') in message
    assert not (empty_torch_home / 'lite0-1234.pth').exists()  # no partial download left behind


@pytest.mark.skipif(_online(), reason='this machine has network access: it would download the weights')
@pytest.mark.parametrize('checkpoint, url', [
    ('torchvision://efficientnet_b0.imagenet1k_v1', TORCHVISION_B0_URL),
    ('open-mmlab://detectron/resnet50_caffe',
     'https://download.openmmlab.com/pretrain/third_party/resnet50_caffe-788b5fa3.pth'),
])
def test_prefixed_name_without_network_names_the_name_and_its_url(empty_torch_home, checkpoint, url):
    """``torchvision://`` and ``open-mmlab://`` resolve through mmengine's own tables; offline, the
    error names both the name and the URL it stands for."""
    model = EffNet('b0', padding='symmetric', init_cfg=dict(type='Pretrained', checkpoint=checkpoint))
    with pytest.raises(CheckpointDownloadError) as info:
        model.init_weights()
    message = str(info.value)
    assert checkpoint in message and url in message and 'offline' in message
    assert "init_cfg=dict(type='Pretrained', checkpoint='/path/to/" in message


def test_unknown_torchvision_name_is_named():
    with pytest.raises(ValueError, match="torchvision://no_such_net.*knows no model 'no_such_net'"):
        EffNet('b0').load_pretrained('torchvision://no_such_net')


def test_downloaded_file_in_the_cache_loads_without_network(empty_torch_home):
    """The advice of the offline message works: a file placed in torch hub's cache under the URL's
    name is loaded offline (by CheckpointLoader, weights-only), with the usual accounting."""
    url = f'http://127.0.0.1:{_closed_port()}/weights/lite0-1234.pth'
    cached = empty_torch_home / 'lite0-1234.pth'
    cached.parent.mkdir(parents=True)
    shutil.copy(efficientnet_lite0_checkpoint(), cached)
    model = EffNet('lite0', init_cfg=dict(type='Pretrained', checkpoint=url))
    with _log_messages() as messages:
        model.init_weights()
    assert f'Loads checkpoint by local backend from path: {cached}' in messages
    assert LITE0_BACKBONE_MESSAGE.format(f'{url} ({cached})') in messages
    _assert_loaded(model, _lite0_reference(None))


# ---- checkpoints that must be refused ---------------------------------------------------------
def _malicious_checkpoint(path: str, marker: str) -> None:
    """A torch.save file whose pickle runs ``touch marker`` when unpickled without weights_only."""

    class Payload:
        def __reduce__(self):
            return os.system, (f'touch {marker}',)

    torch.save({'state_dict': {'stem.conv.weight': torch.zeros(1)}, 'meta': Payload()}, path)


def test_malicious_checkpoint_via_init_cfg_is_refused_and_not_run(tmp_path):
    """The same named refusal as ``load_checkpoint``/``tools/test.py`` (tests/test_compat.py), not a
    raw ``UnpicklingError``; the payload never runs."""
    marker = tmp_path / 'pwned'
    path = str(tmp_path / 'evil.pth')
    _malicious_checkpoint(path, str(marker))
    model = EffNet('lite0', init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(UnsafeCheckpointError, match=r'refusing to load checkpoint .*evil\.pth') as info:
        model.init_weights()
    assert not isinstance(info.value, CorruptCheckpointError)
    assert 'could execute code' in str(info.value) and 'Nothing in it was run' in str(info.value)
    assert not marker.exists()


def test_malicious_download_is_refused_and_not_run(tmp_path, empty_torch_home):
    """A URL's file is unpickled weights-only too (mmengine's URL loader would use
    ``weights_only=False`` and run the payload)."""
    marker = tmp_path / 'pwned'
    url = f'http://127.0.0.1:{_closed_port()}/evil.pth'
    empty_torch_home.mkdir(parents=True)
    _malicious_checkpoint(str(empty_torch_home / 'evil.pth'), str(marker))
    with pytest.raises(UnsafeCheckpointError, match='could execute code'):
        EffNet('lite0').load_pretrained(url)
    assert not marker.exists()


def _truncated(path: str) -> None:
    torch.save(EffNet('lite0', out_indices=(0,)).state_dict(), path)
    with open(path, 'rb') as f:
        data = f.read()
    with open(path, 'wb') as f:
        f.write(data[:len(data) // 2])


def _empty(path: str) -> None:
    open(path, 'wb').close()


def _random_bytes(path: str) -> None:
    with open(path, 'wb') as f:
        f.write(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                              dtype=torch.uint8).numpy().tobytes())


@pytest.mark.parametrize('make', [_truncated, _empty, _random_bytes], ids=['truncated', 'empty', 'random'])
def test_corrupt_file_via_init_cfg_is_named_corrupt(tmp_path, make):
    """Truncated, empty and random files say "corrupt or not a checkpoint" and name the file, not
    "could execute code" (random bytes) nor a raw ``RuntimeError``/``EOFError`` (truncated, empty).
    The error is an ``UnsafeCheckpointError`` so that the tools' handlers print it without a traceback."""
    path = str(tmp_path / f'{make.__name__.strip("_")}.pth')
    make(path)
    model = EffNet('lite0', init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(CorruptCheckpointError) as info:
        model.init_weights()
    message = str(info.value)
    assert path in message and 'corrupt or not a checkpoint' in message
    assert 'could execute code' not in message
    assert isinstance(info.value, UnsafeCheckpointError)


def test_a_good_checkpoint_is_not_called_corrupt(tmp_path):
    """Well-formed files pass the format check (which reads opcodes only): a state dict in torch's
    zip format and in its legacy format, and the shipped Lite0 file; both saved files load."""
    state = torchvision.models.efficientnet_b0(weights=None).state_dict()
    assert checkpoint_format_problem(efficientnet_lite0_checkpoint()) is None
    for legacy in (False, True):
        path = str(tmp_path / f'tv_b0_{legacy}.pth')
        torch.save(state, path, _use_new_zipfile_serialization=not legacy)
        assert checkpoint_format_problem(path) is None
        EffNet('b0', padding='symmetric', num_classes=1000).load_pretrained(path)
