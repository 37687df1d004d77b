"""Backends as plugins, for real: the test plugin package tests/plugins/llmflow_echo is
installed with pip (into a temporary directory, once per module) and llmflow runs in a
subprocess that sees it on PYTHONPATH, as an installed plugin would be seen. Nothing in
llmflow names the `echo` kind: it checks, plans, runs and is drawn from its declaration
alone. The same distribution registers a kind `broken` whose module cannot import."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PLUGINS = Path(__file__).resolve().parent / "plugins"

PROGRAM = """\
model e = echo("parrot", shout=true)

fn greet(name: str) -> reply: str
\"\"\"Say hello to {{name}}.
hello {{name}}
{{reply | max_tokens=8}}\"\"\"

flow main(name: str) -> reply: str {
    reply = greet(name)
}
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin pip-installed (from a copy of its source, so that nothing is built in
    the repository) into a directory for PYTHONPATH. Offline: its build backend is in
    its own tree and needs nothing (see its pyproject.toml)."""
    root = tmp_path_factory.mktemp("site")
    source, into = root / "src", root / "lib"
    shutil.copytree(PLUGINS / "llmflow_echo", source)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index"]
        + ["--target", str(into), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return into


def llmflow(
    site: Path, cwd: Path, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site), "LLMFLOW_HOME": str(cwd / "home")}
    done = subprocess.run(
        [sys.executable, "-m", "llmflow.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


def write(tmp_path: Path, text: str, name: str = "prog.llmflow") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_the_plugins_are_installed_as_distributions(site: Path) -> None:
    (info,) = site.glob("*.dist-info")
    assert info.name == "llmflow_echo-0.1.0.dist-info"
    assert "echo = llmflow_echo:EchoKind" in (info / "entry_points.txt").read_text()


def test_a_plugin_kind_checks_plans_runs_and_is_drawn(site: Path, tmp_path: Path) -> None:
    write(tmp_path, PROGRAM)
    assert llmflow(site, tmp_path, "check", "prog.llmflow").stderr == "1 file checked: no errors\n"

    plan = json.loads(llmflow(site, tmp_path, "plan", "prog.llmflow", "--json").stdout)
    echo = plan["models"]["e"]
    assert (echo["backend"], echo["id"], echo["settings"]) == ("echo", "parrot", {"shout": True})
    assert echo["capabilities"] == {  # the plugin's declaration, read back from the plan
        "concurrent": True,
        "prefix_reuse_min_tokens": None,
        "prefix_reuse_step_tokens": 1,
        "structured_output": False,
        "free": False,
        "timing": {"first_token_seconds": 0.01, "prefill_tps": None, "decode_tps": 5000.0},
    }
    assert (echo["price_in"], echo["price_out"], echo["price_source"]) == (
        1.5,
        3.0,
        "echo price list",
    )
    assert (echo["context"], echo["skills"]) == (2048, {"writing": 0.4})
    assert plan["default_model"] == "e"

    ran = llmflow(site, tmp_path, "run", "prog.llmflow", "-i", "name=Ada", "--json")
    assert json.loads(ran.stdout) == {"reply": "HELLO ADA"}
    (run,) = (tmp_path / "home" / "runs").iterdir()
    (record,) = [json.loads(line) for line in (run / "trace.jsonl").read_text().splitlines()]
    assert record["gen_ai.provider.name"] == "echo"
    assert record["llmflow.cost_usd"] > 0  # at the plugin's own prices

    llmflow(site, tmp_path, "plan", "prog.llmflow", "-o", "plan.dot")
    assert (
        '"parrot"' in (tmp_path / "plan.dot").read_text()
        or "echo" in (tmp_path / "plan.dot").read_text()
    )


@pytest.mark.graphviz("dot")
def test_a_plugin_kind_is_drawn_as_svg(site: Path, tmp_path: Path) -> None:
    write(tmp_path, PROGRAM)
    llmflow(site, tmp_path, "plan", "prog.llmflow", "-o", "plan.svg")
    assert "<svg" in (tmp_path / "plan.svg").read_text()


def test_a_plugin_kinds_settings_are_checked_with_positions(site: Path, tmp_path: Path) -> None:
    write(
        tmp_path,
        'model a = echo("parrot", shout="loud")\n'
        'model b = echo("parrot", shoot=true)\n'
        'model c = echo("owl")\n'
        'model d = echo("parrot", n_ctx=512)\n',
    )
    done = llmflow(site, tmp_path, "check", "prog.llmflow", check=False)
    assert done.returncode == 1
    err = done.stderr
    assert "prog.llmflow:1:32: error: model option 'shout' expects bool\n" in err
    assert "prog.llmflow:2:26: error: unknown model option 'shoot'\n" in err
    assert "hint: did you mean 'shout'?" in err
    assert "prog.llmflow:3:16: error: no echo voice 'owl'\n" in err
    assert "hint: voices: parrot, canyon" in err
    assert "prog.llmflow:4:26: error: model option 'n_ctx' is not a setting of echo models\n" in err
    assert "Traceback" not in err and err.endswith("4 errors\n")


def test_a_config_file_model_of_a_plugin_kind_is_validated_alike(
    site: Path, tmp_path: Path
) -> None:
    (tmp_path / "llmflow.toml").write_text(
        '[models.e]\nbackend = "echo"\nid = "parrot"\nshout = 1\n', encoding="utf-8"
    )
    write(tmp_path, PROGRAM.replace('model e = echo("parrot", shout=true)\n', ""))
    done = llmflow(site, tmp_path, "check", "prog.llmflow", check=False)
    assert done.returncode == 1
    assert "llmflow.toml:4:1: error: model option 'shout' expects bool\n" in done.stderr

    (tmp_path / "llmflow.toml").write_text(
        'default_model = "e"\n[models.e]\nbackend = "echo"\nid = "parrot"\nshout = true\n',
        encoding="utf-8",
    )
    ran = llmflow(site, tmp_path, "run", "prog.llmflow", "-i", "name=Bo", "--json")
    assert json.loads(ran.stdout) == {"reply": "HELLO BO"}


def test_a_plugin_that_fails_to_import_is_a_clear_error(site: Path, tmp_path: Path) -> None:
    write(tmp_path, 'model b = broken("x")\n' + PROGRAM.split("\n", 1)[1])
    done = llmflow(site, tmp_path, "check", "prog.llmflow", check=False)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    assert (
        "prog.llmflow:1:11: error: backend kind 'broken' could not be loaded from "
        "llmflow-echo (entry point broken = 'llmflow_echo.broken:BrokenKind' in "
        "llmflow.backends): ModuleNotFoundError: No module named 'llmflow_missing_dependency'"
    ) in done.stderr


def test_a_broken_plugin_does_not_break_programs_that_do_not_use_it(
    site: Path, tmp_path: Path
) -> None:
    write(tmp_path, 'model s = scripted("canned", reply="hi")\n' + PROGRAM.split("\n", 1)[1])
    ran = llmflow(site, tmp_path, "run", "prog.llmflow", "-i", "name=Ada", "--json")
    assert json.loads(ran.stdout) == {"reply": "hi"}
    done = llmflow(site, tmp_path, "check", "prog.llmflow", check=False)
    assert done.returncode == 0, done.stderr
