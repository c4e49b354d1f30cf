"""The smallest fixes that make mmengine 0.10.7 / mmcv 2.1.0 / mmdeploy 1.3.1 work on torch 2.14.

Every fix here works around an upstream behaviour, names the version it was written against, and has a
test in ``tests/test_compat.py`` that fails without it (each test switches its fix off to show the need).
Applied once, when ``fcos_plugin`` is imported (2. when ``fcos_plugin.deploy`` is).

1. ``torch.load(weights_only=True)`` (default since torch 2.6) refuses mmengine checkpoints: the message
   hub stores ``HistoryBuffer`` objects holding numpy arrays, the meta holds numpy scalars, and
   ``HistoryBuffer.__getstate__`` pickles its class-level statistics methods as ``getattr(HistoryBuffer,
   'min')``. We stop pickling those methods (they are class registrations that ``__setstate__`` restores
   anyway), allow-list exactly ``HistoryBuffer`` and numpy's array/scalar reconstruction (no general
   callables such as ``getattr``), and turn the unpickler's refusal of anything else into a clear error:
   a checkpoint that carries code is not executed. A file that is no checkpoint (empty, truncated, random
   bytes; told apart by parsing its zip container and pickle opcodes, never unpickling) is named as
   corrupt instead. Checkpoints saved by stock mmengine (with those ``getattr`` calls) load too: the
   global ``builtins.getattr`` is answered by ``history_buffer_statistic``, which returns exactly the
   four statistics methods of ``HistoryBuffer`` and refuses anything else (it is no ``getattr``); and
   numpy 1.x's names of the allowed numpy reconstructors (``numpy.core.multiarray``) are accepted.
2. torch >= 2.9 exports ONNX with the dynamo exporter by default; mmdeploy 1.3.1's rewriters need the
   TorchScript exporter, so ``torch.onnx.export`` defaults to ``dynamo=False`` again -- inside mmdeploy's
   export only (an mmdeploy rewriter, registered when ``fcos_plugin.deploy`` is imported).
3. mmengine 0.10.7 calls ``torch.cuda.set_device`` when initialising ``torch.distributed``, which fails
   without a GPU; on CPU-only machines initialisation skips it and uses ``gloo``.
4. mmengine's DDP wrapper is built with ``device_ids=[local_rank]``, which torch rejects for CPU modules:
   ``CPUCompatDistributedDataParallel`` drops ``device_ids`` for CPU modules.
5. mmcv here is built without CUDA kernels: for CUDA tensors ``mmcv.ops.nms`` (used by ``batched_nms``)
   falls back to torchvision's CUDA NMS.
6. Harmless upstream warnings that bury a run's progress are silenced by exact message, nothing else:
   ``pkg_resources`` deprecation (mmengine 0.10.7 imports it; setuptools < 81 is pinned on purpose),
   ``torch.meshgrid`` without ``indexing`` (mmdet 3.3.0's point generators rely on the default 'ij'),
   mmengine's ``LocalVisBackend`` without ``save_dir`` (a visualizer used for drawing only) and
   "bbox/polygon is out of bounds" (mmengine's drawing clips them; predictions may reach past the image).
7. mmengine 0.10.7 writes checkpoints (``save_checkpoint`` -> ``LocalBackend.put``) straight into the
   target file, so a full disk leaves a partial ``epoch_N.pth`` that looks like a checkpoint by name and
   a raw ``OSError``. ``LocalBackend.put`` now writes a temporary file beside the target, fsyncs it and
   renames it over the target (``CheckpointHook`` writes ``last_checkpoint`` only after ``put`` returned,
   so it never points at a file that is not complete); a failed write removes the temporary file and a
   full disk raises ``DiskFullError`` ("no space left on DIR"), which the tools print without a
   traceback. The writer is :func:`fcos_plugin.utils.write_atomic`, the package's one atomic writer.
8. mmengine 0.10.7's ``CheckpointHook._save_best_checkpoint`` removes the previous ``best_*.pth`` before it
   saves the new one, so a save that fails (full disk, a kill, an I/O error) leaves no best checkpoint at
   all. The removal now waits until the new best checkpoint is saved; if the save fails, the previous one
   stays (and the run stops with the save's error).
"""
from __future__ import annotations

import functools
import os
import pickle
import pickletools
import re
import zipfile

import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS

from .utils.fileio import DiskFullError, write_atomic  # noqa: F401  (DiskFullError: raised by fix 7)

_APPLIED: set[str] = set()


# ----------------------------------------------------------------------------------------------------
# 1. checkpoints under weights_only=True
# ----------------------------------------------------------------------------------------------------
def _numpy_safe_globals() -> list:
    """The numpy reconstructors and types an mmengine checkpoint contains, and nothing callable beyond
    array/scalar reconstruction."""
    core = getattr(np, '_core', None) or np.core
    dtype_classes = [type(np.dtype(t)) for t in (
        np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
        np.float16, np.float32, np.float64)]
    # numpy 1.x (what most existing checkpoints were saved with) names the reconstructors
    # numpy.core.multiarray.*; numpy 2 moved them to numpy._core: the same two functions under both names
    numpy1_names = [(core.multiarray._reconstruct, 'numpy.core.multiarray._reconstruct'),
                    (core.multiarray.scalar, 'numpy.core.multiarray.scalar')]
    return [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype,
            *dtype_classes, *numpy1_names]


#: The methods stock mmengine pickles as ``getattr(HistoryBuffer, name)`` (``_set_default_statistics``).
HISTORY_BUFFER_STATISTICS = ('min', 'max', 'current', 'mean')


def history_buffer_statistic(owner, name):
    """What weights-only loading calls for the global ``builtins.getattr``, which stock mmengine
    checkpoints use only for ``getattr(HistoryBuffer, 'min')`` and its three siblings (pickle protocol 2
    names a method no other way; ``HistoryBuffer.__getstate__`` stores them in every buffer's state).

    It answers exactly those four with the method itself -- a plain function that the unpickler stores
    in the buffer's state and cannot call, being no allowed global -- and refuses every other owner or
    name: it is not ``getattr``."""
    if owner is HistoryBuffer and isinstance(name, str) and name in HISTORY_BUFFER_STATISTICS:
        return vars(HistoryBuffer)[name]
    what = owner.__qualname__ if isinstance(owner, type) else f'a {type(owner).__name__} object'
    raise pickle.UnpicklingError(
        f'getattr({what}, {name!r:.60}) is not allowed: weights-only loading answers getattr only for '
        f'the statistics methods of mmengine\'s HistoryBuffer ({", ".join(HISTORY_BUFFER_STATISTICS)})')


SAFE_CHECKPOINT_GLOBALS = [HistoryBuffer, *_numpy_safe_globals(),
                           (history_buffer_statistic, 'builtins.getattr')]


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds objects that ``torch.load(weights_only=True)`` will not build."""


class CorruptCheckpointError(UnsafeCheckpointError):
    """The file is no checkpoint at all (empty, truncated, random bytes). A subclass of
    ``UnsafeCheckpointError`` so that every path that reports refused checkpoints reports it too."""


def checkpoint_format_problem(filename: str) -> str | None:
    """Why ``filename`` cannot be a ``torch.save`` file, found by reading its container and parsing its
    pickle opcodes without unpickling anything; ``None`` when both are well-formed (or unreadable)."""
    try:
        with open(filename, 'rb') as f:
            head = f.read(2)
            if not head:
                return 'the file is empty'
            is_zip = zipfile.is_zipfile(f)
            f.seek(0)
            if not is_zip:  # a legacy torch.save file is five pickles, then the raw storages
                return 'a truncated or damaged zip archive' if head == b'PK' else _pickle_problem(f, 5)
            with zipfile.ZipFile(f) as archive:
                pickles = [n for n in archive.namelist() if n.rsplit('/', 1)[-1] == 'data.pkl']
                if not pickles:
                    return 'a zip archive without data.pkl'
                damaged = archive.testzip()
                if damaged is not None:
                    return f'member {damaged} of the zip archive is damaged'
                with archive.open(pickles[0]) as stream:
                    return _pickle_problem(stream)
    except (zipfile.BadZipFile, EOFError, ValueError) as e:
        return f'a damaged zip archive ({e})'
    except OSError:
        return None  # unreadable for another reason: the original error says which


def _pickle_problem(stream, count: int = 1) -> str | None:
    """What is wrong with the first ``count`` pickles of ``stream``; ``None``: nothing, or the stream is
    one complete pickle (a plain ``pickle.dump``, refused or not by the unpickler on its own merits)."""
    if stream.read(1) != b'\x80':  # torch.save writes pickle protocol >= 2, which starts with PROTO
        return 'not a pickle stream'
    stream.seek(0)
    for i in range(count):
        try:
            for _ in pickletools.genops(stream):  # reads opcodes, builds and runs nothing
                pass
        except Exception as e:  # noqa: BLE001  (genops raises ValueError and others on broken streams)
            return f'broken pickle stream: {e}' if i == 0 else f'it ends early or is damaged ({e})'
        if i == 0:
            position = stream.tell()
            if not stream.read(1):
                return None
            stream.seek(position)
    return None


def _load_from_local_safely(original):
    @functools.wraps(original)
    def load_from_local(filename, map_location=None):
        try:
            return original(filename, map_location)
        except FileNotFoundError:
            raise
        except Exception as e:
            problem = checkpoint_format_problem(os.path.expanduser(filename))
            if problem is not None:
                raise CorruptCheckpointError(
                    f'cannot load checkpoint {filename}: the file is corrupt or not a checkpoint '
                    f'({problem}). Nothing in it was run. Save or download it again.') from None
            if not isinstance(e, pickle.UnpicklingError):
                raise
            raise UnsafeCheckpointError(
                f'refusing to load checkpoint {filename}: it contains {refused_object(e)}, outside the '
                f'allow-list of weights-only loading, so it could execute code when unpickled. Nothing in '
                f'it was run. Only load it if you trust its source, e.g. convert it with '
                f'torch.load(weights_only=False) in a separate, trusted step.') from None
    return load_from_local


_ANSI_ESCAPE = re.compile(r'\x1b\[[0-9;]*[A-Za-z]')


def refused_object(error: BaseException) -> str:
    """What torch's weights-only unpickler refused, from its message (several paragraphs with ANSI
    escape codes, the refused object in the ``WeightsUnpickler error:`` line): ``the global os.system``,
    or that line's text, or ``objects`` when neither is found."""
    text = _ANSI_ESCAPE.sub('', str(error))
    match = re.search(r'GLOBAL ([\w.]+)', text)
    if match:
        return f'the global {match.group(1)}'
    match = re.search(r'WeightsUnpickler error: ([^\n]+)', text)
    if match:
        return f'something refused ({match.group(1).strip().rstrip(".")})'
    return 'objects'


def _history_buffer_getstate(self) -> dict:
    # mmengine 0.10.7 adds ``statistics_methods`` (functions, pickled through ``getattr``) to the state.
    # They are class-level registrations restored by ``__setstate__``: keep the state to plain data.
    state = dict(self.__dict__)
    state.pop('statistics_methods', None)
    return state


def patch_checkpoint_loading() -> None:
    if 'checkpoint' in _APPLIED:
        return
    torch.serialization.add_safe_globals(SAFE_CHECKPOINT_GLOBALS)
    HistoryBuffer.__getstate__ = _history_buffer_getstate
    from mmengine.runner import checkpoint as ckpt
    wrapped = _load_from_local_safely(ckpt.load_from_local)
    ckpt.load_from_local = wrapped
    # CheckpointLoader keeps its own reference in the scheme registry
    for prefix, fn in list(ckpt.CheckpointLoader._schemes.items()):
        if getattr(fn, '__name__', '') == 'load_from_local':
            ckpt.CheckpointLoader._schemes[prefix] = wrapped
    _APPLIED.add('checkpoint')


# ----------------------------------------------------------------------------------------------------
# 2. ONNX export through the TorchScript exporter
# ----------------------------------------------------------------------------------------------------
def _torchscript_export(*args, **kwargs):
    """``torch.onnx.export`` inside mmdeploy's export: the TorchScript exporter unless asked otherwise."""
    from mmdeploy.core import FUNCTION_REWRITER
    kwargs.setdefault('dynamo', False)
    return FUNCTION_REWRITER.get_context().origin_func(*args, **kwargs)


def patch_onnx_export() -> None:
    """Register :func:`_torchscript_export` as an mmdeploy rewriter of ``torch.onnx.export``: active only
    while mmdeploy exports (its ``RewriterContext`` swaps it in and back), so ``torch.onnx.export`` is
    untouched everywhere else. Called by ``fcos_plugin.deploy`` (which mmdeploy imports through the
    deploy configs' ``codebase_config.module``), not when ``fcos_plugin`` is imported."""
    if 'onnx' in _APPLIED or 'onnx' in disabled_fixes():
        return
    from mmdeploy.core import FUNCTION_REWRITER
    FUNCTION_REWRITER.register_rewriter(func_name='torch.onnx.export')(_torchscript_export)
    _APPLIED.add('onnx')


# ----------------------------------------------------------------------------------------------------
# 3./4. distributed training on CPU
# ----------------------------------------------------------------------------------------------------
def patch_dist_init() -> None:
    if 'dist' in _APPLIED:
        return
    from mmengine.dist import utils as dist_utils
    original = dist_utils._init_dist_pytorch

    @functools.wraps(original)
    def _init_dist_pytorch(backend, init_backend='torch', **kwargs):
        if torch.cuda.is_available():
            return original(backend, init_backend=init_backend, **kwargs)
        set_device = torch.cuda.set_device
        torch.cuda.set_device = lambda device: None  # no GPU: nothing to select
        try:
            return original('gloo' if backend == 'nccl' else backend, init_backend=init_backend,
                            **kwargs)
        finally:
            torch.cuda.set_device = set_device

    dist_utils._init_dist_pytorch = _init_dist_pytorch
    _APPLIED.add('dist')


@MODEL_WRAPPERS.register_module()
class CPUCompatDistributedDataParallel(MMDistributedDataParallel):
    """mmengine's ``MMDistributedDataParallel`` that also wraps CPU modules (gloo).

    mmengine's Runner passes ``device_ids=[local_rank]``; torch requires ``device_ids=None`` for modules
    on CPU. On GPUs this is exactly ``MMDistributedDataParallel``.
    """

    def __init__(self, module, detect_anomalous_params: bool = False, **kwargs):
        if next(module.parameters()).device.type == 'cpu':
            kwargs.pop('device_ids', None)
            kwargs.pop('output_device', None)
        super().__init__(module, detect_anomalous_params=detect_anomalous_params, **kwargs)


# ----------------------------------------------------------------------------------------------------
# 5. NMS on CUDA without mmcv CUDA kernels
# ----------------------------------------------------------------------------------------------------
def _mmcv_has_cuda_ops() -> bool:
    from mmcv.utils import ext_loader
    try:
        ext = ext_loader.load_ext('_ext', ['get_compiling_cuda_version'])
        return ext.get_compiling_cuda_version() not in ('', 'not available')
    except Exception:
        return False


def torchvision_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, offset: int = 0,
                    score_threshold: float = 0, max_num: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """``mmcv.ops.nms`` computed with ``torchvision.ops.nms`` (any device), with mmcv's semantics:
    scores are filtered only for ``score_threshold > 0`` (so zero scores survive a 0 threshold), and
    ``max_num`` keeps the best."""
    import torchvision
    if offset != 0:
        raise ValueError('the torchvision NMS fallback supports offset=0 only')
    if score_threshold > 0:
        valid = torch.nonzero(scores > score_threshold).squeeze(1)
    else:
        valid = torch.arange(len(scores), device=scores.device)
    inds = valid[torchvision.ops.nms(boxes[valid].float(), scores[valid].float(), float(iou_threshold))]
    if max_num > 0:
        inds = inds[:max_num]
    return torch.cat((boxes[inds], scores[inds].reshape(-1, 1)), dim=1), inds


def patch_nms() -> None:
    if 'nms' in _APPLIED or _mmcv_has_cuda_ops():
        return
    import importlib
    nms_module = importlib.import_module('mmcv.ops.nms')  # the module (mmcv.ops.nms is also a function)
    original = nms_module.nms

    @functools.wraps(original)
    def nms(boxes, scores, iou_threshold, offset=0, score_threshold=0, max_num=-1):
        if not (isinstance(boxes, torch.Tensor) and boxes.is_cuda):
            return original(boxes, scores, iou_threshold, offset, score_threshold, max_num)
        return torchvision_nms(boxes, scores, iou_threshold, offset, score_threshold, max_num)

    nms_module.nms = nms  # batched_nms resolves 'nms' through this module's globals
    _APPLIED.add('nms')


# ----------------------------------------------------------------------------------------------------
# 6. harmless upstream warnings
# ----------------------------------------------------------------------------------------------------
HARMLESS_WARNINGS = (
    r'pkg_resources is deprecated as an API',
    r'torch\.meshgrid: in an upcoming release, it will be required to pass the indexing argument',
    r'Failed to add <class \'mmengine\.visualization\.vis_backend\.LocalVisBackend\'>',
    r'.*The (bbox|polygon) is out of bounds, the drawn (bbox|polygon) may not be in the image',
)


def silence_harmless_warnings() -> None:
    import warnings
    for message in HARMLESS_WARNINGS:
        warnings.filterwarnings('ignore', message=message)


# ----------------------------------------------------------------------------------------------------
# 7. atomic checkpoint writes
# ----------------------------------------------------------------------------------------------------
def write_bytes_atomic(data: bytes, filepath: str) -> None:
    """Write ``data`` to ``filepath`` with :func:`fcos_plugin.utils.write_atomic` (temporary file beside
    it, fsync, rename; :class:`DiskFullError` naming the directory when the disk is full)."""
    def write(tmp: str) -> None:
        with open(tmp, 'wb') as f:
            f.write(data)
    write_atomic(filepath, write, size=len(data))


def patch_atomic_save() -> None:
    if 'atomic_save' in _APPLIED:
        return
    from mmengine.fileio.backends.local_backend import LocalBackend
    original = LocalBackend.put

    @functools.wraps(original)
    def put(self, obj: bytes, filepath) -> None:
        write_bytes_atomic(obj, filepath)

    LocalBackend.put = put
    _APPLIED.add('atomic_save')


# ----------------------------------------------------------------------------------------------------
# 8. the previous best checkpoint is removed only after the new one is saved
# ----------------------------------------------------------------------------------------------------
class _KeepPreviousBest:
    """A file backend that reports the previous best checkpoint(s) as absent, so that mmengine neither
    removes them nor says it did; everything else is the backend's."""

    def __init__(self, backend, keep: set) -> None:
        self._backend = backend
        self._keep = keep

    def __getattr__(self, name: str):
        return getattr(self._backend, name)

    def isfile(self, path) -> bool:
        return path not in self._keep and self._backend.isfile(path)

    def isdir(self, path) -> bool:
        return path not in self._keep and self._backend.isdir(path)


def _best_paths(hook) -> set:
    """The paths of the hook's current best checkpoints (one per key indicator)."""
    paths = (getattr(hook, 'best_ckpt_path', None), *getattr(hook, 'best_ckpt_path_dict', {}).values())
    return {p for p in paths if p}


def patch_keep_best_until_saved() -> None:
    if 'keep_best' in _APPLIED:
        return
    from mmengine.hooks import CheckpointHook
    original = CheckpointHook._save_best_checkpoint

    @functools.wraps(original)
    def _save_best_checkpoint(self, runner, metrics) -> None:
        backend = getattr(self, 'file_backend', None)
        previous = _best_paths(self)
        if backend is None or not previous:
            return original(self, runner, metrics)
        self.file_backend = _KeepPreviousBest(backend, previous)
        try:
            original(self, runner, metrics)  # raises if the new best could not be saved: nothing removed
        finally:
            self.file_backend = backend
        for path in previous - _best_paths(self):  # replaced by a new best that is now saved
            if backend.isfile(path):
                backend.remove(path)
            elif backend.isdir(path):
                backend.rmtree(path)
            else:
                continue
            runner.logger.info(f'The previous best checkpoint {path} is removed (the new one is saved)')

    CheckpointHook._save_best_checkpoint = _save_best_checkpoint
    _APPLIED.add('keep_best')


PATCHES = {'checkpoint': patch_checkpoint_loading, 'dist': patch_dist_init, 'nms': patch_nms,
           'warnings': silence_harmless_warnings, 'atomic_save': patch_atomic_save,
           'keep_best': patch_keep_best_until_saved}
#: Applied where they are needed, not on import: ``onnx`` by ``fcos_plugin.deploy``.
ON_DEMAND = {'onnx': patch_onnx_export}


def disabled_fixes() -> set[str]:
    """The fixes named in ``FCOS_PLUGIN_DISABLE_COMPAT`` (comma separated; the tests use it to show each
    fix is still needed)."""
    disabled = set(filter(None, os.environ.get('FCOS_PLUGIN_DISABLE_COMPAT', '').split(',')))
    unknown = disabled - set(PATCHES) - set(ON_DEMAND)
    if unknown:
        raise ValueError(f'FCOS_PLUGIN_DISABLE_COMPAT names unknown fixes {sorted(unknown)}; '
                         f'known: {sorted({*PATCHES, *ON_DEMAND})}')
    return disabled


def apply_all() -> None:
    """Apply every fix of :data:`PATCHES` except the :func:`disabled_fixes`."""
    disabled = disabled_fixes()
    for name, patch in PATCHES.items():
        if name not in disabled:
            patch()


apply_all()
