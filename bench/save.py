"""Where every bench script writes its `--json`."""

from __future__ import annotations

import json
from pathlib import Path


def save_json(path, res) -> None:
    """Write `res` to `path` (nothing when no path was given), creating its folder. Scripts call it after each
    measured row, not only at the end: a device call's time limit can cut a script between two rows, and what
    was measured must still come back. default=str: devices, dtypes and paths in the rows print as text."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(res, indent=2, default=str))
