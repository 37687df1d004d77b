"""Profile files: keys, reading with positioned errors, atomic writes, merging."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

import llmflow
from llmflow.compiler import profile as profiles
from llmflow.compiler.ir import Plan

ROOT = Path(__file__).resolve().parents[2]

SOURCE = '''
model small = local("smollm2-135m")
model mini = openai("gpt-4o-mini", price_in=0.15, price_out=0.6)

fn ask(x: str) -> y: str
"""Question: {{x}} Answer: {{y | max_tokens=20}}"""

fn judge(y: str) -> ok: bool
"""Is this right? {{y}} {{ok}}"""

flow main(x: str) -> ok: bool { ok = judge(ask(x)) }
'''


def compiled(tmp_path: Path, source: str = SOURCE) -> Plan:
    path = tmp_path / "p.llmflow"
    path.write_text(textwrap.dedent(source))
    return llmflow.compile(path, optimize=False)


def score(mean: float, n: int = 50) -> profiles.Score:
    return profiles.Score(mean=mean, low=mean - 0.05, high=mean + 0.05, n=n)


def a_profile(plan: Plan, **measured: float) -> profiles.Profile:
    hashes = profiles.templates(plan)
    return profiles.Profile(
        program=profiles.ProgramRef(
            file="p.llmflow", flow="main", hash=profiles.program_hash(plan)
        ),
        data="dev.jsonl sha256:abc, exact match",
        models={n: profiles.model_ref(s) for n, s in plan.models.items()},
        baseline=profiles.Baseline(assignment={"ask": "small", "judge": "small"}, score=score(0.5)),
        functions={
            fn: {
                model: profiles.Measurement(
                    template=hashes[fn],
                    score=score(value),
                    per_call=profiles.PerCall(input_tokens=20, output_tokens=5, seconds=0.2),
                    categories=profiles.Categories(input="x", scores={"a": score(value, 10)}),
                )
            }
            for key, value in measured.items()
            for fn, model in [key.split("__")]
        },
    )


def error(text: str | bytes) -> str:
    with pytest.raises(profiles.ProfileError) as info:
        profiles.parse(text, "p.profile.json")
    rendered = info.value.render()
    assert "Traceback" not in rendered and "internal error" not in rendered
    return rendered


# ---- keys ---------------------------------------------------------------------------------


def test_template_hash_changes_with_the_template_only(tmp_path: Path) -> None:
    plan = compiled(tmp_path)
    before = profiles.templates(plan)
    edited = compiled(tmp_path, SOURCE.replace("Answer: {{y", "Reply: {{y"))
    after = profiles.templates(edited)
    assert before["ask"] != after["ask"] and before["judge"] == after["judge"]
    # Moving the function, renaming a model or pinning it changes no template.
    moved = compiled(tmp_path, "\n\n# a comment\n" + SOURCE.replace("model small", "model tiny"))
    assert profiles.templates(moved) == before
    options = compiled(tmp_path, SOURCE.replace("max_tokens=20", "max_tokens=30"))
    assert profiles.templates(options)["ask"] != before["ask"]
    assert profiles.program_hash(plan) != profiles.program_hash(edited)


def test_model_identity_is_what_changes_answers() -> None:
    from llmflow.compiler.models import ModelSpec

    spec = ModelSpec(
        name="m", backend="openai_compatible", id="x", settings={"base_url": "http://a/v1"}
    )
    ref = profiles.model_ref(spec)
    same = spec.model_copy(
        update={
            "name": "n",
            "price_in": 3.0,
            "settings": {"base_url": "http://a/v1", "rpm": 5, "timeout": 3.0},
        }
    )
    assert profiles.model_ref(same).key == ref.key
    other_url = spec.model_copy(update={"settings": {"base_url": "http://b/v1"}})
    assert profiles.model_ref(other_url).key != ref.key
    completion = spec.model_copy(update={"chat": False})
    assert profiles.model_ref(completion).key != ref.key
    assert str(ref) == "openai_compatible:x"


def test_the_profile_lives_beside_the_program() -> None:
    assert profiles.profile_path("examples/report.llmflow") == Path("examples/report.profile.json")


# ---- round trip, save, merge ------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    plan = compiled(tmp_path)
    prof = a_profile(plan, ask__mini=0.7)
    path = tmp_path / "p.profile.json"
    profiles.save(prof, path)
    assert profiles.load(path) == prof
    text = path.read_text(encoding="utf-8")
    assert text.endswith("}\n") and '\n  "llmflow_profile": 1,' in text  # reviewable
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_save_replaces_in_one_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = compiled(tmp_path)
    path = tmp_path / "p.profile.json"
    profiles.save(a_profile(plan, ask__mini=0.7), path)
    before = path.read_bytes()

    def broken(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(profiles.ProfileError) as info:
        profiles.save(a_profile(plan, ask__mini=0.9), path)
    assert "cannot write it: No space left on device" in info.value.render()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.llmflow", "p.profile.json"]


def test_merge_keeps_old_entries_and_takes_new_ones(tmp_path: Path) -> None:
    plan = compiled(tmp_path)
    old = a_profile(plan, ask__mini=0.7, judge__mini=0.6)
    new = a_profile(plan, ask__mini=0.8)
    merged = profiles.merge(old, new)
    assert merged.dropped == []
    assert merged.profile.functions["ask"]["mini"].score.mean == 0.8
    assert merged.profile.functions["judge"]["mini"].score.mean == 0.6
    assert profiles.merge(None, new).profile == new


def test_merge_across_baselines_replaces_and_says_what_it_dropped(tmp_path: Path) -> None:
    plan = compiled(tmp_path)
    old = a_profile(plan, ask__mini=0.7, judge__mini=0.6)
    new = a_profile(plan, ask__mini=0.8)
    new = new.model_copy(
        update={"baseline": new.baseline.model_copy(update={"score": score(0.55)})}
    )
    merged = profiles.merge(old, new)
    assert merged.profile == new
    assert merged.dropped == ["judge on mini: measured against another baseline"]


def test_merge_keeps_a_model_the_new_profile_does_not_name(tmp_path: Path) -> None:
    plan = compiled(tmp_path)
    old = a_profile(plan, judge__mini=0.6)
    new = a_profile(plan, ask__small=0.5)
    new = new.model_copy(
        update={
            "models": {"small": new.models["small"]},
            "functions": {"ask": {"small": new.functions["ask"]["small"]}},
        }
    )
    merged = profiles.merge(old, new).profile
    assert merged.models["mini"] == old.models["mini"]
    assert merged.functions["judge"]["mini"].score.mean == 0.6


def test_match_uses_what_holds_and_reports_the_rest(tmp_path: Path) -> None:
    plan = compiled(tmp_path)
    prof = a_profile(plan, ask__mini=0.7, judge__mini=0.6)
    evidence = profiles.match(prof, plan)
    assert evidence.stale == []
    assert set(evidence.measured) == {("ask", "mini"), ("judge", "mini")}
    assert evidence.score_of("ask", "small") == prof.baseline.score  # the baseline's own
    assert evidence.estimate({"ask": "mini", "judge": "mini"}) == pytest.approx(0.5 + 0.2 + 0.1)
    assert evidence.estimate({"ask": "small", "judge": "small"}) == pytest.approx(0.5)
    other = compiled(tmp_path, SOURCE.replace("flow main", "flow other"))
    assert "not 'other': nothing used" in profiles.match(prof, other).stale[0]
    gone = compiled(tmp_path, SOURCE.replace("ok = judge(ask(x))", "ok = judge(x)"))
    evidence = profiles.match(prof, gone)
    assert any("ask is not a function of this flow" in s for s in evidence.stale)


# ---- reading what is not a profile -------------------------------------------------------


@pytest.fixture
def good(tmp_path: Path) -> str:
    return a_profile(compiled(tmp_path), ask__mini=0.7).to_json()


def test_a_cut_profile_points_at_where_it_ends(good: str) -> None:
    for cut in (1, len(good) // 2, len(good) - 3):
        out = error(good[:cut])
        assert out.startswith("p.profile.json:") and "is not valid JSON" in out
    assert (
        error("").splitlines()[0] == "p.profile.json:1:1: error: is not valid JSON: expecting value"
    )


def test_wrong_fields_point_at_their_line(good: str) -> None:
    bad = good.replace('"n": 50', '"n": "fifty"', 1)
    out = error(bad)
    line = bad[: bad.index('"n": "fifty"')].count("\n") + 1
    assert out.startswith(f"p.profile.json:{line}:")
    assert "baseline.score.n: Input should be a valid integer" in out
    out = error(good.replace('"mean": 0.7,', '"mean": 0.99,', 1))
    assert "a score needs low <= mean <= high" in out
    out = error(good.replace('"input_tokens": 20.0', '"input_tokens": -1', 1))
    assert "input_tokens: Input should be greater than or equal to 0" in out
    out = error(good.replace('"template": "sha256:', '"template": "md5:', 1))
    assert "template: String should match pattern" in out


def test_unknown_and_missing_fields(good: str) -> None:
    out = error(good.replace('"data":', '"extra": 1, "data":', 1))
    assert out.splitlines()[0].startswith("p.profile.json:8:3: error: unknown field 'extra'")
    data = json.loads(good)
    del data["baseline"]["score"]
    assert "baseline: missing field 'score'" in error(json.dumps(data, indent=2))
    data = json.loads(good)
    data["functions"]["ask"]["nobody"] = data["functions"]["ask"]["mini"]
    assert "functions.ask: 'nobody' is not in models" in error(json.dumps(data))


def test_versions(good: str) -> None:
    out = error(good.replace('"llmflow_profile": 1', '"llmflow_profile": 7'))
    assert out.splitlines()[0] == (
        "p.profile.json:2:3: error: this profile is version 7; this llmflow reads version 1"
    )
    assert "re-run llmflow tune" in out
    data = json.loads(good)
    del data["llmflow_profile"]
    assert "has no llmflow_profile version" in error(json.dumps(data))


def test_hostile_profiles(good: str) -> None:
    assert "NaN is not a number JSON allows" in error(good.replace('"mean": 0.7', '"mean": NaN', 1))
    assert "Infinity is not a number" in error(good.replace('"n": 50', '"n": Infinity', 1))
    assert "key 'data' appears twice" in error(good.replace('"data":', '"data": "x", "data":', 1))
    assert "nested too deeply" in error("[" * 100_000 + "]" * 100_000)
    assert "nested too deeply" in error('{"a":' * 40 + "1" + "}" * 40)
    assert "not a profile" in error('{"llmflow_profile": ' + "9" * 5000 + "}")
    assert "is not UTF-8 text" in error(b'{"data": "\xff"}')
    assert "a profile is a JSON object, not a list" in error("[1, 2]")
    assert "not a profile" in error(" " * (profiles.MAX_PROFILE_BYTES + 1))
    # escape sequences in a message never reach the terminal raw
    out = error(good.replace('"data":', '"\\u001b[31mred": 1, "data":', 1))
    assert "\x1b" not in out


def test_a_byte_order_mark_is_fine(good: str) -> None:
    assert (
        profiles.parse(("\ufeff" + good).encode("utf-8"), "p.profile.json").program.flow == "main"
    )


def test_files_that_are_not_there_or_not_files(tmp_path: Path) -> None:
    with pytest.raises(profiles.ProfileError) as info:
        profiles.load(tmp_path / "none.profile.json")
    assert (
        "no such profile" in info.value.render()
        and "llmflow tune writes one" in info.value.render()
    )
    with pytest.raises(profiles.ProfileError) as info:
        profiles.load(tmp_path)
    assert "is a directory" in info.value.render()
    huge = tmp_path / "huge.profile.json"
    with open(huge, "wb") as file:
        file.truncate(profiles.MAX_PROFILE_BYTES + 10)
    with pytest.raises(profiles.ProfileError) as info:
        profiles.load(huge)
    assert "larger than 64 MiB" in info.value.render()


def test_new_profile_from_measurements(tmp_path: Path) -> None:
    plan = compiled(tmp_path)
    prof = profiles.new_profile(
        plan,
        {"ask": "small", "judge": "small"},
        score(0.5),
        {("ask", "mini"): (score(0.7), profiles.PerCall(input_tokens=12, dollars=0.0001))},
        data="dev.jsonl",
    )
    assert prof.program.file == "p.llmflow" and set(prof.models) == {"small", "mini"}
    evidence = profiles.match(profiles.parse(prof.to_json(), "x"), plan)
    assert evidence.stale == [] and evidence.score_of("ask", "mini") == score(0.7)


def test_every_field_error_at_once() -> None:
    text = (
        '{\n  "llmflow_profile": 1,\n'
        '  "program": {"file": "t", "flow": "main", "hash": "sha256:00"}\n}\n'
    )
    assert error(text) == (
        "p.profile.json:3:44: error: program.hash: String should match pattern "
        "'^sha256:[0-9a-f]{64}$'\n"
        "  |\n"
        '3 |   "program": {"file": "t", "flow": "main", "hash": "sha256:00"}\n'
        "  |                                            ^\n"
        "\n"
        "p.profile.json:1:1: error: missing field 'models'\n"
        "  |\n"
        "1 | {\n"
        "  | ^\n"
        "\n"
        "p.profile.json:1:1: error: missing field 'baseline'\n"
        "  |\n"
        "1 | {\n"
        "  | ^"
    )
    many = '{"llmflow_profile": 1, ' + ", ".join(f'"x{i}": 1' for i in range(30)) + "}"
    out = error(many)
    assert out.count("error:") == 21 and "p.profile.json: error: and 13 more errors" in out
