"""Loading mmengine checkpoints with ``torch.load(weights_only=True)`` (torch's default since 2.6).

mmengine 0.10.7's checkpoints hold more than tensors: the message hub stores ``HistoryBuffer`` objects
with numpy arrays, the meta numpy scalars, and ``HistoryBuffer.__getstate__`` pickles its class-level
statistics methods as ``getattr(HistoryBuffer, 'min')``. Weights-only loading refuses all of them, so on
torch 2.14 no mmengine checkpoint loads through mmengine, mmdet or mmdeploy as they are.

:func:`safe_checkpoint_loading` is the one place this is answered, for the duration of a ``with`` block
(torch's allow-list is restored after it; only ``import fcos_plugin.deploy`` keeps these entries for the
process, for mmdeploy's own API -- why: ``fcos_plugin/deploy/__init__.py``): it allow-lists exactly
``HistoryBuffer``, numpy's array/scalar reconstruction (also under numpy 1.x's names) and, for the global
``builtins.getattr``, :func:`history_buffer_statistic`, which answers those four statistics methods and
refuses everything else (it is no ``getattr``). Anything else a checkpoint names is refused by torch's
unpickler, so a checkpoint that carries code is not executed; the block turns that refusal into
:class:`UnsafeCheckpointError` naming the file and the refused object, and a file that is no checkpoint
at all (empty, truncated, random bytes: told apart by parsing its zip container and pickle opcodes, never
unpickling) into :class:`CorruptCheckpointError`.

Who uses it: :class:`fcos_plugin.engine.CompatRunner` (``load_from``, ``--resume``, ``init_cfg``
checkpoints), the deploy tools and ``tools/infer.py``. In your own code::

    with safe_checkpoint_loading(ckpt):
        model = init_detector(config, ckpt)
"""
from __future__ import annotations

import contextlib
import os
import pickle
import pickletools
import re
import zipfile
from typing import Iterator

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

__all__ = ['CorruptCheckpointError', 'SAFE_CHECKPOINT_GLOBALS', 'UnsafeCheckpointError',
           'checkpoint_format_problem', 'history_buffer_statistic', 'safe_checkpoint_loading']


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




def explain_checkpoint_error(error: BaseException,
                             filenames: tuple[str, ...]) -> UnsafeCheckpointError | None:
    """The named error for ``error`` raised while loading one of ``filenames``: corrupt (the file's
    format is broken) or unsafe (the unpickler refused an object); ``None`` when it is neither."""
    if isinstance(error, (FileNotFoundError, UnsafeCheckpointError)):
        return None
    for filename in filenames:
        problem = checkpoint_format_problem(os.path.expanduser(filename))
        if problem is not None:
            return CorruptCheckpointError(
                f'cannot load checkpoint {filename}: the file is corrupt or not a checkpoint '
                f'({problem}). Nothing in it was run. Save or download it again.')
    if not isinstance(error, pickle.UnpicklingError) or not filenames:
        return None
    which = filenames[0] if len(filenames) == 1 else f'one of {", ".join(filenames)}'
    return UnsafeCheckpointError(
        f'refusing to load checkpoint {which}: it contains {refused_object(error)}, outside the '
        f'allow-list of weights-only loading, so it could execute code when unpickled. Nothing in '
        f'it was run. Only load it if you trust its source, e.g. convert it with '
        f'torch.load(weights_only=False) in a separate, trusted step.')


@contextlib.contextmanager
def safe_checkpoint_loading(*filenames: str) -> Iterator[None]:
    """Within the block, ``torch.load(weights_only=True)`` loads mmengine checkpoints (the allow-list
    :data:`SAFE_CHECKPOINT_GLOBALS`), and a failure to load one of ``filenames`` is raised as
    :class:`CorruptCheckpointError` / :class:`UnsafeCheckpointError` naming the file. Other errors pass
    unchanged. Afterwards torch's allow-list is what it was before (blocks nest)."""
    before = torch.serialization.get_safe_globals()
    torch.serialization.add_safe_globals(SAFE_CHECKPOINT_GLOBALS)
    try:
        yield
    except Exception as error:
        named = explain_checkpoint_error(error, tuple(str(f) for f in filenames if f))
        if named is None:
            raise
        raise named from None
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)
