"""Bounds, run-time choices and record formats enforced by the embedded backend's grammars,
end to end on the packaged SmolLM2 (short generations, some seconds each)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from local_models import needs_smollm2

import llmflow
from llmflow.compiler.catalog import resolve

pytest.importorskip("llama_cpp")

from llama_cpp import LlamaGrammar  # noqa: E402

from llmflow.runtime.backends.base import Constraint, GenerationRequest, Turn  # noqa: E402
from llmflow.runtime.backends.local import LocalBackend  # noqa: E402
from llmflow.runtime.backends.local.grammars import _grammar_source  # noqa: E402

pytestmark = pytest.mark.model


RESUME = """\
JANE DOE
jane.doe@example.com | +1 555 0100 | Portland, OR

SUMMARY
Backend engineer with 7 years of experience building data pipelines and APIs.

EXPERIENCE
Senior Engineer, Acme Corp (2020-2024): led the migration to Kubernetes, built ETL in Python.
Engineer, Initech (2017-2020): REST APIs in Go and PostgreSQL, CI with Jenkins.

SKILLS
Python, Go, SQL, PostgreSQL, Kubernetes, Docker, Airflow, Terraform, AWS, Jenkins, Git, Linux
"""


def test_a_bounded_string_is_a_grammar_llama_cpp_reads() -> None:
    source = _grammar_source(Constraint(max_chars=12))
    assert source == "root ::= [^\\x00]{0,12}"
    LlamaGrammar.from_string(source, verbose=False)


def test_numbers_have_at_most_18_digits_in_a_grammar_llama_cpp_reads() -> None:
    for pattern in ("int", "float"):
        source = _grammar_source(Constraint(pattern=pattern))
        assert source is not None and "[0-9]{1,18}" in source and "+" not in source[:20]
        LlamaGrammar.from_string(source, verbose=False)


@needs_smollm2
def test_an_int_output_stops_after_18_digits() -> None:
    """Unbounded, SmolLM2 answers "What is 3+4?" with digits until max_tokens."""
    backend = LocalBackend({"chat": resolve("chat", "local", "smollm2-135m")})
    request = GenerationRequest(
        model="chat",
        turns=[Turn(role="user", text="What is 3+4? Answer:")],
        max_tokens=40,
        constraint=Constraint(pattern="int"),
    )
    try:
        generation = asyncio.run(backend.generate(request))
    finally:
        asyncio.run(backend.aclose())
    digits = generation.text.strip().lstrip("-")
    assert digits.isdigit() and len(digits) <= 18


@needs_smollm2
def test_a_list_bound_stops_the_model_at_that_many_items() -> None:
    """Unbounded, SmolLM2 repeats skills ("LinusDocker", ...) until max_tokens; with
    maxItems the grammar closes the list after two."""
    backend = LocalBackend({"chat": resolve("chat", "local", "smollm2-135m")})
    skills = {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 2}
    schema = {
        "type": "object",
        "properties": {"skills": skills},
        "required": ["skills"],
        "additionalProperties": False,
    }
    text = (
        "Skills: Python, Go, SQL, Docker, Kubernetes, AWS, Git, Linux.\nExtract the skills as JSON."
    )
    request = GenerationRequest(
        model="chat",
        turns=[Turn(role="user", text=text)],
        max_tokens=60,
        constraint=Constraint(json_schema=schema),
    )
    try:
        generation = asyncio.run(backend.generate(request))
    finally:
        asyncio.run(backend.aclose())
    items = json.loads(generation.text)["skills"]
    assert 1 <= len(items) <= 2
    assert all(len(item) <= 12 for item in items)


@needs_smollm2
def test_a_bounded_resume_extraction_finishes_and_parses(tmp_path: Path) -> None:
    """Unbounded, SmolLM2 writes `skills` until max_tokens runs out (twice) and the call
    fails; bounded, the grammar closes the list and the record parses."""
    path = tmp_path / "resume.llmflow"
    path.write_text(
        '''
model small = local("smollm2-135m")

record Resume {
    name: str[max=60] "the person's full name",
    email: str[max=60],
    skills: list[str[max=30], max=8] "technologies the person knows",
    years: int "years of professional experience",
}

fn extract(text: str) -> resume: Resume
"""
Extract the person's name, email, skills and years of experience from this resume.

{{text}}
{{resume}}
"""

flow main(text: str) -> resume: Resume {
    resume = extract(text)
}
''',
    )
    resume = llmflow.run(llmflow.compile(path), {"text": RESUME})["resume"]
    assert set(resume) == {"name", "email", "skills", "years"}
    assert resume["email"] == "jane.doe@example.com"
    assert 1 <= len(resume["skills"]) <= 8
    assert isinstance(resume["years"], int)


@needs_smollm2
def test_choices_known_at_run_time_constrain_the_answer(tmp_path: Path) -> None:
    path = tmp_path / "route.llmflow"
    path.write_text(
        '''
model small = local("smollm2-135m")

fn route(ticket: str, teams: list[str]) -> team: str
"""
Which team should handle this ticket? Teams:
{{teams}}

Ticket: {{ticket}}
Team: {{team | choices=teams, max_tokens=4}}
"""

flow main(ticket: str, teams: list[str]) -> team: str {
    team = route(ticket, teams)
}
''',
    )
    plan = llmflow.compile(path)
    for teams in (["billing", "shipping"], ["zeta-ops", "omega-desk"]):
        team = llmflow.run(plan, {"ticket": "I was charged twice", "teams": teams})["team"]
        assert team in teams
