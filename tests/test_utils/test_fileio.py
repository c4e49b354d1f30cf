"""fcos_plugin.utils.write_atomic, the package's one atomic writer (checkpoints, JSON results, tables)."""
from __future__ import annotations

import os
import stat

import pytest

from fcos_plugin.utils import write_atomic, write_json_atomic


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _text(content: str):
    def write(tmp: str) -> None:
        with open(tmp, 'w') as f:
            f.write(content)
    return write


def test_new_and_existing_files_get_the_mode_open_would_give(tmp_path):
    plain = tmp_path / 'plain.json'
    plain.write_text('{}')  # what open(path, 'w') gives a new file under this umask
    new = tmp_path / 'new.json'
    write_json_atomic({'a': 1}, str(new))
    assert _mode(new) == _mode(plain)  # (tempfile.mkstemp would leave 0o600)
    assert new.read_text() == '{\n "a": 1\n}'
    kept = tmp_path / 'kept.txt'
    kept.write_text('old')
    os.chmod(kept, 0o640)
    write_atomic(str(kept), _text('new'))
    assert kept.read_text() == 'new' and _mode(kept) == 0o640


def test_a_failed_write_keeps_the_old_content_and_leaves_nothing(tmp_path):
    target = tmp_path / 'results.md'
    target.write_text('old')

    def fail(tmp: str) -> None:
        with open(tmp, 'w') as f:
            f.write('half')
        raise RuntimeError('interrupted')

    with pytest.raises(RuntimeError, match='interrupted'):
        write_atomic(str(target), fail)
    assert target.read_text() == 'old'
    assert sorted(os.listdir(tmp_path)) == ['results.md']


def test_suffix_is_kept_and_links_are_written_through(tmp_path):
    seen = []

    def write(tmp: str) -> None:  # writers such as cv2.imwrite choose the format by the suffix
        seen.append(tmp)
        _text('img')(tmp)

    real = tmp_path / 'real.jpg'
    real.write_text('x')
    link = tmp_path / 'link.jpg'
    link.symlink_to(real)
    write_atomic(str(link), write)
    assert seen[0].endswith('.jpg') and os.path.dirname(seen[0]) == str(tmp_path)
    assert link.is_symlink() and real.read_text() == 'img'
    assert sorted(os.listdir(tmp_path)) == ['link.jpg', 'real.jpg']
