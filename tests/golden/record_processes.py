"""Record `tests/golden/processes.npz` (run before a refactor of the losses or samplers):

    JAX_PLATFORMS=cpu .venv/bin/python tests/golden/record_processes.py
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import cases  # noqa: E402

if __name__ == "__main__":
    target = Path(__file__).resolve().parent / "processes.npz"
    flat = cases.flatten(cases.cases())
    np.savez_compressed(target, **flat)
    import json

    target.with_suffix(".machine.json").write_text(json.dumps(cases.machine_signature(), indent=1) + "\n")
    print(f"wrote {len(flat)} arrays to {target} ({target.stat().st_size / 1024:.0f} KiB)")
