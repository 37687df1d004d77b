"""Finding the Python function behind an `extern fn`, for the checker and the runtime.

Modules are looked up beside the program first, then on the normal import path. The
program's folder is on `sys.path` only while importing, and a module of the same name
that another program loaded from its own folder is not reused.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llmflow.compiler.diagnostics import did_you_mean
from llmflow.errors import LLMFlowError


class ExternError(LLMFlowError):
    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


@contextmanager
def _path_first(folder: Path) -> Iterator[None]:
    entry = str(folder)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        sys.path.remove(entry)


def _local_file(module_name: str, base_dir: Path) -> Path | None:
    stem = base_dir.joinpath(*module_name.split("."))
    for candidate in (stem.with_suffix(".py"), stem / "__init__.py"):
        with contextlib.suppress(OSError):  # a name too long for the file system, say
            if candidate.is_file():
                return candidate.resolve()
    return None


def load_extern(target: str, base_dir: Path) -> Callable[..., Any]:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ExternError(
            f"'{target}' does not name a Python function", 'write "package.module:function"'
        )
    local = _local_file(module_name, base_dir)
    loaded = sys.modules.get(module_name)
    loaded_file = getattr(loaded, "__file__", None)
    if local is not None and loaded_file is not None and Path(loaded_file).resolve() != local:
        # Another program's module of the same name: import this program's own.
        for name in [n for n in sys.modules if n == module_name or n.startswith(module_name + ".")]:
            del sys.modules[name]
    try:
        with _path_first(base_dir):
            module = importlib.import_module(module_name)
    except Exception as exc:  # any error while importing user code is the user's to see
        raise ExternError(
            f"cannot import '{module_name}': {exc}",
            "modules are looked up in the program's folder, then on PYTHONPATH",
        ) from None
    func: Any = module
    for part in attr.split("."):
        func = getattr(func, part, None)
        if func is None:
            names = [n for n in dir(module) if not n.startswith("_")]
            raise ExternError(
                f"module '{module_name}' has no attribute '{attr}'", did_you_mean(attr, names)
            )
    if not callable(func):
        raise ExternError(f"'{target}' is not callable")
    return func
