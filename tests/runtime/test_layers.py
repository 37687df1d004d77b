"""The runtime stands on the compiler's data (models, IR, prices, token estimates,
prefix reuse), never on the optimizer's internals: a run loads no pass."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import importlib, importlib.util, pkgutil, sys
# The package without running its __init__, which imports the API (and so the optimizer).
sys.modules["llmflow"] = importlib.util.module_from_spec(importlib.util.find_spec("llmflow"))
import llmflow.runtime
for info in pkgutil.walk_packages(llmflow.runtime.__path__, "llmflow.runtime."):
    importlib.import_module(info.name)
assert "llmflow.runtime.gateway" in sys.modules and "llmflow.api" not in sys.modules
print(sorted(m for m in sys.modules if m.startswith("llmflow.compiler.optimizer")))
"""


def test_no_runtime_module_imports_the_optimizer() -> None:
    run = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
