"""The simulator judges sendq by its own rules: it imports nothing of sendq outside ``worker.simulator``.

Were it to share sendq's validation (``worker.sms``), producer code or signature code, a mistake there would be
made on both sides of the wire and no test against the simulator could catch it.
"""

from __future__ import annotations

import ast
from pathlib import Path

SIMULATOR = Path(__file__).resolve().parents[1] / "worker" / "simulator"
OURS = ("worker", "producers")


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
        elif isinstance(node, ast.ImportFrom):
            raise AssertionError(f"{path.name}: relative import; name worker.simulator modules in full")
    return found


def test_the_simulator_imports_nothing_of_sendq_but_itself():
    modules = sorted(SIMULATOR.glob("*.py"))
    assert len(modules) > 10
    outside = {
        f"{path.name}: {name}" for path in modules for name in imported_modules(path)
        if name.split(".")[0] in OURS and not (name == "worker.simulator" or name.startswith("worker.simulator."))
    }
    assert not outside, sorted(outside)


def test_loading_the_simulator_loads_no_other_sendq_module():
    import subprocess
    import sys

    probe = ("import sys, worker.simulator; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('worker', 'producers')))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    modules = ast.literal_eval(loaded)
    assert all(m in ("worker", "worker.simulator") or m.startswith("worker.simulator.") for m in modules), loaded
