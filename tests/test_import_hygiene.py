"""The house rules on imports, checked in fresh interpreters (a module cached by another test
would hide a violation): the engine never imports textual; the workstation never imports torch at
module top."""

import pkgutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules(package: str) -> list[str]:
    pkg_dir = ROOT / package
    names = [package]
    for info in pkgutil.walk_packages([str(pkg_dir)], prefix=f"{package}."):
        names.append(info.name)
    return [n for n in names if not n.endswith("__main__")]


def _loaded_after_import(modules: list[str], forbidden: str) -> list[str]:
    code = (
        "import importlib, sys\n"
        f"bad = []\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"    if {forbidden!r} in sys.modules:\n"
        "        bad.append(name); break\n"
        "print('\\n'.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return [line for line in out.stdout.splitlines() if line]


def test_engine_never_imports_textual():
    assert _loaded_after_import(_modules("engine"), "textual") == []


def test_workstation_never_imports_torch_at_module_top():
    # one interpreter per module, so the first offender is named, not just "something did"
    offenders = []
    for name in _modules("cosmos_tui"):
        offenders += _loaded_after_import([name], "torch")
    assert offenders == []
