"""The config file: where it is found, the models it defines, the precedence of the
program over the config over the catalog, and its errors rendered like compile errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from llmflow.cli import main
from llmflow.compiler import check_file, compile_file
from llmflow.compiler.check import Checked
from llmflow.compiler.config import find_config, locate
from llmflow.errors import CompileError

Write = Callable[[str, str], Path]

TABLE = "litellm 1.110.2 price table"

PINNED = '''
@model(MODEL)
fn answer(q: str) -> a: str
"""
{{q}} {{a}}
"""

flow main(q: str) -> a: str {
    a = answer(q)
}
'''

UNPINNED = '''
fn answer(q: str) -> a: str
"""
{{q}} {{a}}
"""

flow main(q: str) -> a: str {
    a = answer(q)
}
'''

MINI = """
[models.mini]
backend = "openai"
id = "gpt-4o-mini"
skills = { reasoning = 0.8 }
rpm = 500
"""


def check(path: Path) -> Checked:
    try:
        return check_file(path)
    except CompileError as err:
        pytest.fail("unexpected compile errors:\n" + err.render())


def errors(path: Path) -> CompileError:
    with pytest.raises(CompileError) as info:
        check_file(path)
    return info.value


# ---- models a program may use without declaring them ------------------------------------


def test_a_config_model_is_usable_without_a_declaration(write: Write) -> None:
    write("llmflow.toml", MINI)
    path = write("prog.llmflow", PINNED.replace("MODEL", "mini"))
    plan = compile_file(path)
    mini = plan.models["mini"]
    assert (mini.backend, mini.id) == ("openai", "gpt-4o-mini")
    assert [n.call.model for n in plan.calls() if n.call] == ["mini"]
    assert (mini.price_in, mini.price_out) == (0.15, 0.6)
    assert mini.price_source == TABLE
    assert mini.skills == {"reasoning": 0.8}
    assert mini.skill_source == {"reasoning": "llmflow.toml"}
    assert mini.limits.rpm == 500 and mini.sources["rpm"] == "llmflow.toml"
    # a program without declarations still defaults to the embedded model
    assert plan.default_model == "default" and "default" in plan.models


def test_unknown_pin_suggests_config_models(write: Write) -> None:
    write("llmflow.toml", MINI)
    err = errors(write("prog.llmflow", PINNED.replace("MODEL", "mnii")))
    assert [(d.message, d.hint) for d in err.diagnostics] == [
        ("unknown model 'mnii'", "did you mean 'mini'?")
    ]


def test_default_model_from_the_config(write: Write) -> None:
    write("llmflow.toml", 'default_model = "mini"\n' + MINI)
    checked = check(write("prog.llmflow", UNPINNED))
    assert checked.default_model == "mini"
    assert "default" not in checked.models
    # a model declared in the program's main file is still the default
    declared = write("decl.llmflow", 'model small = local("smollm2-135m")\n' + UNPINNED)
    assert check(declared).default_model == "small"


# ---- precedence: declaration > config > catalog ------------------------------------------


def test_the_declaration_wins_over_the_config_and_the_config_over_the_catalog(
    write: Write,
) -> None:
    write(
        "llmflow.toml",
        """
        [models.mini]
        backend = "local"          # the declaration's backend and id win
        id = "smollm2-135m"
        rpm = 500
        tpm = 100000
        price_in = 0.1
        context = 1000
        skills = { reasoning = 0.5, writing = 0.7 }
        """,
    )
    path = write(
        "prog.llmflow",
        'model mini = openai("gpt-4o-mini", rpm=60, context=64000, skills={reasoning: 0.9})\n'
        + PINNED.replace("MODEL", "mini"),
    )
    mini = check(path).models["mini"]
    assert (mini.backend, mini.id) == ("openai", "gpt-4o-mini")
    assert (mini.limits.rpm, mini.sources["rpm"]) == (60, "declaration")
    assert (mini.limits.tpm, mini.sources["tpm"]) == (100000, "llmflow.toml")
    assert (mini.context, mini.sources["context"]) == (64000, "declaration")
    assert (mini.price_in, mini.sources["price_in"]) == (0.1, "llmflow.toml")
    assert (mini.price_out, mini.sources["price_out"]) == (0.6, TABLE)
    assert mini.price_source == f"llmflow.toml + {TABLE}"
    assert mini.skills == {"reasoning": 0.9, "writing": 0.7}
    assert mini.skill_source == {"reasoning": "declaration", "writing": "llmflow.toml"}
    assert mini.settings["rpm"] == 60 and mini.settings["tpm"] == 100000


def test_overrides_by_name_apply_to_declared_and_default_models(write: Write) -> None:
    write(
        "llmflow.toml",
        """
        [models.small]
        skills = { writing = 0.4 }
        concurrency = 1
        n_ctx = 2048

        [models.default]
        skills = { reasoning = 0.3 }
        """,
    )
    small = check(write("a.llmflow", 'model small = local("smollm2-135m")\n' + UNPINNED)).models[
        "small"
    ]
    assert small.skills == {"reasoning": 0.1, "writing": 0.4, "extraction": 0.2}
    assert small.skill_source["writing"] == "llmflow.toml"
    assert small.limits.concurrency == 1 and small.settings == {"concurrency": 1, "n_ctx": 2048}
    default = check(write("b.llmflow", UNPINNED)).models["default"]
    assert default.skills["reasoning"] == 0.3
    assert default.skill_source["reasoning"] == "llmflow.toml"


# ---- finding the file ---------------------------------------------------------------------


def test_the_nearest_config_wins(write: Write, tmp_path: Path) -> None:
    write("llmflow.toml", MINI)
    write("sub/llmflow.toml", MINI.replace("rpm = 500", "rpm = 7"))
    near = check(write("sub/prog.llmflow", PINNED.replace("MODEL", "mini")))
    assert near.models["mini"].limits.rpm == 7
    far = check(write("sub/deeper/prog.llmflow", PINNED.replace("MODEL", "mini")))
    assert far.models["mini"].limits.rpm == 7
    top = check(write("prog.llmflow", PINNED.replace("MODEL", "mini")))
    assert top.models["mini"].limits.rpm == 500


def test_pyproject_tool_llmflow(write: Write, tmp_path: Path) -> None:
    write(
        "pyproject.toml",
        '[project]\nname = "x"\n\n'
        + MINI.replace("[models.", "[tool.llmflow.models.").replace("rpm = 500", "rpm = 9"),
    )
    write("a/pyproject.toml", '[project]\nname = "no llmflow table here"\n')
    checked = check(write("a/prog.llmflow", PINNED.replace("MODEL", "mini")))
    assert checked.models["mini"].limits.rpm == 9
    assert checked.models["mini"].sources["rpm"] == "pyproject.toml"
    # in one directory, llmflow.toml comes before pyproject.toml
    write("llmflow.toml", MINI)
    found = find_config(tmp_path / "a")
    assert found is not None and found[0] == tmp_path / "llmflow.toml"


# ---- errors -------------------------------------------------------------------------------


def test_config_errors_are_rendered_like_compile_errors(write: Write) -> None:
    write(
        "llmflow.toml",
        """
        default_model = "mni"

        [models.mini]
        backend = "openai"
        id = "gpt-4o-mini"
        rpm = "fast"
        api_key = "sk-not-here"
        skills = { writing = 0.5, reasoning = 2 }
        colour = "blue"

        [models.tiny]
        backend = "local"
        id = "smollm3"
        """,
    )
    err = errors(write("prog.llmflow", PINNED.replace("MODEL", "mini")))
    got = [(d.kind, d.message, d.span.file, d.span.line, d.span.col) for d in err.diagnostics]
    file = str(Path(err.diagnostics[0].span.file))
    assert file.endswith("llmflow.toml")
    assert got == [
        ("config", "default_model 'mni' is not a model", file, 1, 1),
        ("config", "model option 'rpm' expects int", file, 6, 1),
        ("config", "API keys do not belong in config files", file, 7, 1),
        ("config", "skill 'reasoning' must be a number from 0 to 1", file, 8, 27),
        ("config", "unknown model option 'colour'", file, 9, 1),
        ("config", "unknown embedded model 'smollm3'", file, 13, 1),
    ]
    rendered = err.render()
    assert f"{file}:6:1: error: model option 'rpm' expects int\n" in rendered
    assert '6 | rpm = "fast"\n  | ^^^\n' in rendered
    assert "8 | skills = { writing = 0.5, reasoning = 2 }\n" in rendered
    assert "  |                           ^^^^^^^^^\n" in rendered
    assert "hint: did you mean 'mini'?" in rendered
    assert "sk-not-here" not in rendered  # a secret is never echoed
    assert '7 | api_key = "***"\n' in rendered


def test_toml_syntax_error_has_the_file_line_and_column(
    write: Write, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write("llmflow.toml", '[models.mini]\nbackend = "openai"\nid = gpt-4o-mini\n')
    write("prog.llmflow", UNPINNED)
    monkeypatch.chdir(path.parent)
    assert main(["check", "prog.llmflow"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(
        "llmflow.toml:3:6: error: llmflow.toml is not valid TOML: invalid value\n"
    )
    assert "3 | id = gpt-4o-mini\n  |      ^\n" in err
    assert "Traceback" not in err and err.endswith("1 file checked: 1 error\n")


@pytest.mark.parametrize("text", ["a = " + "[" * 100_000, "a = " + "[" * 900 + "]" * 900])
def test_a_config_nested_too_deeply_is_an_error_not_a_crash(
    text: str, write: Write, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write("llmflow.toml", text + "\n")
    write("prog.llmflow", UNPINNED)
    monkeypatch.chdir(path.parent)
    assert main(["check", "prog.llmflow"]) == 1
    err = capsys.readouterr().err
    assert "llmflow.toml is not valid TOML: arrays or tables nested too deeply" in err
    assert "internal error" not in err and err.endswith("1 file checked: 1 error\n")


def test_models_command_reports_config_errors(
    write: Write, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write("llmflow.toml", "[models.x]\nbackend = 'opnai'\nid = 'y'\n")
    monkeypatch.chdir(path.parent)
    assert main(["models"]) == 1
    err = capsys.readouterr().err
    assert "llmflow.toml:2:1: error: unknown model backend 'opnai'" in err
    assert "did you mean 'openai'?" in err


def test_locate_finds_keys_in_tables_dotted_keys_and_inline_tables() -> None:
    text = (
        'default_model = "m"\n'
        "[models.a]\n"
        "rpm = 1\n"
        "[models]\n"
        'b = { id = "x", skills = { reasoning = 2 } }\n'
        "c.tpm = 3\n"
    )

    def at(*keys: str) -> tuple[int, int]:
        span = locate(text, "f", keys)
        return span.line, span.col

    assert at("default_model") == (1, 1)
    assert at("models", "a") == (2, 1)
    assert at("models", "a", "rpm") == (3, 1)
    assert at("models", "b", "id") == (5, 7)
    assert at("models", "b", "skills", "reasoning") == (5, 28)
    assert at("models", "c", "tpm") == (6, 1)
    assert at("models", "zzz") == (4, 1)
    assert at("nothing") == (1, 1)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "base_url is not a URL: write it like http://localhost:8080/v1"),
        ("ftp://x", "base_url must be an http:// or https:// URL, not ftp://"),
        ("http://h:99999", "base_url's port must be a number from 1 to 65535"),
        ("http://h:abc", "base_url's port must be a number from 1 to 65535"),
        (
            "http://[::1",
            "base_url is not a valid URL: its [IPv6 address] is not closed or not valid",
        ),
    ],
)
def test_a_base_url_that_can_never_work_is_an_error_at_its_line(
    url: str, message: str, write: Write
) -> None:
    write(
        "llmflow.toml",
        f'[models.mini]\nbackend = "openai"\nid = "gpt-4o-mini"\nbase_url = "{url}"\n',
    )
    err = errors(write("prog.llmflow", PINNED.replace("MODEL", "mini")))
    [diag] = err.diagnostics
    assert (diag.kind, diag.message, diag.span.line, diag.span.col) == ("config", message, 4, 1)


def test_good_base_urls_are_accepted(write: Write) -> None:
    for url in ["http://localhost:8080/v1", "https://api.example.com", "http://[::1]:8000/v1"]:
        write(
            "llmflow.toml",
            f'[models.mini]\nbackend = "openai_compatible"\nid = "m"\nbase_url = "{url}"\n',
        )
        checked = check(write("prog.llmflow", PINNED.replace("MODEL", "mini")))
        assert checked.models["mini"].settings["base_url"] == url


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_a_config_that_is_not_text_is_never_shown(
    write: Write, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cloned repository's llmflow.toml linked to /proc/self/environ must not print it."""
    monkeypatch.setenv("LLMFLOW_TEST_ENV_MARKER", "visible-only-in-the-environment")
    (tmp_path / "llmflow.toml").symlink_to("/proc/self/environ")
    err = errors(write("prog.llmflow", UNPINNED))
    [diag] = err.diagnostics
    assert diag.kind == "config" and diag.span is None
    assert diag.message.startswith("not a text file: a NUL byte at byte offset")
    assert "visible-only-in-the-environment" not in err.render()
    assert err.render().startswith(f"{tmp_path / 'llmflow.toml'}: error: not a text file")


def test_a_config_that_is_not_utf8_is_a_file_error(write: Write, tmp_path: Path) -> None:
    (tmp_path / "llmflow.toml").write_bytes(b'default_model = "caf\xe9"\n')
    [diag] = errors(write("prog.llmflow", UNPINNED)).diagnostics
    assert diag.message == (
        "not UTF-8 text: byte 0xe9 at byte offset 20 (line 1, column 21) is invalid; "
        "save it as UTF-8"
    )
