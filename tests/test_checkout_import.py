"""A checkout used without installing it (PYTHONPATH=<checkout>, as on a lent GPU machine
that has JAX but no network) imports the kernels as `workbench.kernels`, like an install."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]


def test_device_scripts_import_from_an_uninstalled_checkout(tmp_path):
    # -S skips site.py, so the editable install's .pth finder is not loaded; the venv's
    # site-packages (and any a .pth chains to, as in a venv layered over another) are added
    # as plain paths (third-party packages only).
    site_dirs = [sysconfig.get_paths()["purelib"]] + [p for p in sys.path if p.endswith("site-packages")]
    code = (
        "import sys\n"
        f"sys.path[:0] = [{str(CHECKOUT)!r}]\n"
        f"sys.path.extend({list(dict.fromkeys(site_dirs))!r})\n"
        "assert not any('editable' in str(finder) for finder in sys.meta_path)\n"
        "import workbench.benchmarks.hopper_check, workbench.benchmarks.tuning, workbench.attention\n"
        "import workbench.kernels.experimental.hopper\n"
        "import workbench.kernels as kernels\n"
        f"assert kernels.__file__ == {str(CHECKOUT / 'kernels' / '__init__.py')!r}, kernels.__file__\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
