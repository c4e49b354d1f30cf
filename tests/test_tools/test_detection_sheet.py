"""tools/analysis_tools/detection_sheet.py: a sample of pictures of different sizes in one sheet."""
from __future__ import annotations

import subprocess

import cv2
import numpy as np

from fcos_plugin.analysis import detection_sheet

from ..conftest import REPO, run_tool

TOOL = 'tools/analysis_tools/detection_sheet.py'


def _pictures(folder, sizes):
    folder.mkdir()
    paths = []
    for i, (w, h) in enumerate(sizes):
        path = folder / f'img-{i:02d}.jpg'
        cv2.imwrite(str(path), np.full((h, w, 3), 20 * i, np.uint8))
        paths.append(str(path))
    return paths


def test_sheet_of_evenly_spaced_pictures_scaled_to_one_width(tmp_path):
    # 7 pictures of different sizes and aspect ratios; 4 of them, 2 per row, each 100 px wide
    _pictures(tmp_path / 'show', [(400, 300), (200, 200), (800, 400), (100, 300), (640, 480), (50, 40),
                                  (300, 100)])
    out = tmp_path / 'sheet.jpg'
    proc = subprocess.run(run_tool(TOOL, str(tmp_path / 'show'), '--out', str(out), '--num', '4',
                                   '--width', '100', '--columns', '2'),
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # evenly spaced in name order: 0, 2, 4, 6 (the first and the last always)
    assert [line.rsplit('/', 1)[-1] for line in proc.stdout.splitlines()[:4]] == [
        'img-00.jpg', 'img-02.jpg', 'img-04.jpg', 'img-06.jpg']
    sheet = cv2.imread(str(out))
    # rows: max(75, 50) and max(75, 33) high, 4 px gaps; two 100 px tiles and 4 px gaps per row
    assert sheet.shape == (75 + 4 + 75 + 4, 2 * (100 + 4), 3)
    assert '4 of 7 pictures' in proc.stdout


def test_a_name_in_several_show_dirs_comes_from_the_last(tmp_path):
    """``WORK_DIR/*/show`` of two test runs: each picture once, from the newer run (sorted last)."""
    _pictures(tmp_path / '20260101_000000', [(40, 30), (40, 30)])
    _pictures(tmp_path / '20260102_000000', [(80, 30)])
    out = tmp_path / 'sheet.png'
    proc = subprocess.run(run_tool(TOOL, str(tmp_path / '20260101_000000'), str(tmp_path / '20260102_000000'),
                                   '--out', str(out)), capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[:2] == [str(tmp_path / '20260102_000000' / 'img-00.jpg'),
                                            str(tmp_path / '20260101_000000' / 'img-01.jpg')]
    assert cv2.imread(str(out)).shape == (2 * (30 + 4), 80, 3)


def test_default_sheet_is_unchanged(tmp_path):
    """Without width/columns the sheet is what tools/run_demo.py always drew: one picture per row, padded
    white to the widest, 4 px apart."""
    paths = _pictures(tmp_path / 'p', [(30, 20), (50, 10)])
    sheet = detection_sheet(paths, str(tmp_path / 's.png'))
    assert sheet.shape == (20 + 4 + 10 + 4, 50, 3)
    assert (sheet[:20, 30:] == 255).all() and (sheet[20:24] == 255).all()


def test_no_pictures_is_one_line(tmp_path):
    (tmp_path / 'empty').mkdir()
    proc = subprocess.run(run_tool(TOOL, str(tmp_path / 'empty'), '--out', str(tmp_path / 's.jpg')),
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode != 0 and 'no pictures in' in proc.stderr
    assert 'Traceback' not in proc.stderr
