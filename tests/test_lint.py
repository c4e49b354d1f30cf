"""The code base stays ruff-clean (rules in ruff.toml)."""
import subprocess
import sys

from .conftest import REPO


def test_ruff_clean():
    proc = subprocess.run([sys.executable, '-m', 'ruff', 'check', 'fcos_plugin', 'tools', 'tests',
                           'benchmarks', 'configs', '--output-format', 'concise'],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:]
