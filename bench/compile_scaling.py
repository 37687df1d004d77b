"""Compile time against program size: parse, check, lower and optimize, timed apart.

Programs:

- N calls (1k, 3k, 10k): the synthetic programs of `bench/assignment.py`, N semantic
  functions (each with a template of 3 placeholders and a random `@needs`) and a flow
  calling each once in a random DAG, over 6 priced models;
- 5 MB: 1,000 functions with 5 KB prompts (4 placeholders each) called by one flow;
- 64k placeholders: one function whose template holds 65,536 placeholders;
- deep: a chain of 10,000 assignments and an else-if chain of 10,000 branches.

    python bench/compile_scaling.py            # prints a Markdown table
    python bench/compile_scaling.py --quick    # 1k and 3k calls only

Each stage runs once in this process, as `llmflow plan` runs it; times are the process's
CPU seconds (the machine may be shared: wall time there says more about the neighbours).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from assignment import program as calls_program  # noqa: E402

from llmflow.compiler.check import check  # noqa: E402
from llmflow.compiler.lower import lower  # noqa: E402
from llmflow.compiler.modules import load_program  # noqa: E402
from llmflow.compiler.optimizer import optimize  # noqa: E402


def big_prompts(functions: int = 1000, prompt_bytes: int = 5000) -> str:
    """About `functions` × `prompt_bytes` of source: long prompts, few placeholders."""
    filler = ("Read the material below with care and answer in plain words. " * 100)[
        : prompt_bytes // 4
    ]
    lines = []
    for i in range(functions):
        lines.append(
            f'fn f{i}(a: str, b: str) -> out: str\n"""\n{filler}\n{{{{a}}}}\n{filler}\n'
            f'{{{{b}}}}\n{filler}\n{{{{a}}}}\n{filler}\n{{{{out | max_tokens=100}}}}\n"""'
        )
    body = "\n".join(f"    v{i} = f{i}(a, b)" for i in range(functions))
    every = ", ".join(f"v{i}" for i in range(functions))
    lines.append(
        f"flow main(a: str, b: str) -> result: str {{\n{body}\n    result = join([{every}])\n}}"
    )
    return "\n\n".join(lines) + "\n"


def many_placeholders(count: int = 65536) -> str:
    holes = "\n".join(f"{{{{x}}}} {i}" for i in range(count))
    return (
        f'fn wide(x: str) -> out: str\n"""\n{holes}\n{{{{out}}}}\n"""\n\n'
        "flow main(x: str) -> out: str {\n    out = wide(x)\n}\n"
    )


def assignment_chain(length: int = 10000) -> str:
    body = "\n".join(f"    v{i + 1} = v{i} + 1" for i in range(length))
    return f"flow main(v0: int) -> out: int {{\n{body}\n    out = v{length}\n}}\n"


def else_if_chain(length: int = 10000) -> str:
    arms = " else ".join(f"if x == {i} {{\n        out = {i}\n    }}" for i in range(length))
    return f"flow main(x: int) -> out: int {{\n    {arms} else {{\n        out = -1\n    }}\n}}\n"


def measure(source: str) -> dict[str, float]:
    """Seconds per stage for one program."""
    times: dict[str, float] = {}

    def timed(stage: str, fn: Callable[[], object]) -> object:
        start = time.process_time()
        result = fn()
        times[stage] = time.process_time() - start
        return result

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "program.llmflow"
        path.write_text(source, encoding="utf-8")
        program, diags = timed("parse", lambda: load_program(path))  # type: ignore[misc]
        checked, more = timed("check", lambda: check(program))  # type: ignore[misc]
        assert not diags and not more, (diags + more)[:3]
        plan = timed("lower", lambda: lower(checked, "main"))
        timed("optimize", lambda: optimize(plan))  # type: ignore[arg-type]
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1k and 3k calls only")
    args = parser.parse_args()
    programs: list[tuple[str, int | None, str]] = [
        (f"{n:,} calls", n, calls_program(n, seed=n)) for n in (1000, 3000, 10000)
    ]
    if args.quick:
        programs = programs[:2]
    else:
        programs += [
            ("1,000 calls, 5 MB of prompts", 1000, big_prompts()),
            ("65,536 placeholders", None, many_placeholders()),
            ("10,000 chained assignments", None, assignment_chain()),
            ("else-if chain of 10,000", None, else_if_chain()),
        ]
    print("| program | source | parse | check | lower | optimize | total | per 1,000 calls |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, calls, source in programs:
        t = measure(source)
        total = sum(t.values())
        per = f"{total / calls * 1000:.2f} s" if calls else ""
        size = f"{len(source.encode()) / 1e6:.1f} MB"
        cells = " | ".join(f"{t[s]:.2f} s" for s in ("parse", "check", "lower", "optimize"))
        print(f"| {name} | {size} | {cells} | {total:.2f} s | {per} |", flush=True)


if __name__ == "__main__":
    main()
