"""Several completions decoded together in one llama.cpp context, one sequence each.

Calls that share a prefix need it evaluated once: the prefix sits in sequence 0 of the
KV cache and every other sequence gets the prefix's cells by reference
(`llama_memory_seq_cp` in a unified KV cache copies no data). The rest of every prompt
is evaluated in one batch (tokens that several prompts go on with alike, once), then each
step decodes one token of every unfinished call in one batch, which on a CPU costs little
more than one sequence's step: a group of short calls runs at a large batch's rate
instead of paying a small batch's rate, and a step's fixed cost, per call.

A completion here follows `Llama.create_completion`'s rules for the same prompt (same
sampler chain, same rules for stop strings, end tokens and `max_tokens`). Its logits do
not match bit for bit: llama.cpp's kernels are not batch-invariant (a step of several
rows, or a prefix evaluated in another chunking, accumulates in another order), which
moves logits by a few tenths on a 4-bit model (measured on SmolLM2-135M Q4_1, AVX2:
up to ~0.3 among the top tokens) and can flip a choice between nearly tied tokens, and
so the text after it. The backend's tests compare each answer with the call alone:
equal, or diverging only where the two tokens were that close (teacher-forced check).
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import llama_cpp
import numpy as np
from llama_cpp import Llama, LlamaGrammar
from llama_cpp import _internals as internals


class BatchError(RuntimeError):
    """llama.cpp refused a batch (e.g. no room left in the KV cache)."""


@dataclass
class Job:
    """One completion to run: the prompt, how much of it sequence 0 already holds, and
    `create_completion`'s sampling arguments."""

    tokens: np.ndarray
    reused: int
    """Leading prompt tokens whose KV cells are taken from sequence 0 (not evaluated);
    at most `len(tokens) - 1`, since the last prompt token's logits are needed."""
    max_tokens: int
    temperature: float
    seed: int
    stop: Sequence[str] = ()
    grammar: LlamaGrammar | None = None
    choices: Sequence[str] = ()
    """The texts `grammar` allows, when it is a choice among strings (an enum): once
    the text so far starts only one of them, the rest is spelled out, not decoded."""
    cancelled: Callable[[], bool] = lambda: False


@dataclass
class Output:
    text: str
    tokens: list[int]
    finish_reason: str
    shared: int = 0
    """Prompt tokens after `Job.reused` that another job of the batch evaluated for both
    (their prompts go on alike): not evaluated again for this one."""
    forced: int = 0
    """Output tokens of a choice's rest, added without decoding (`Job.choices`): the
    tokenizer's split of that text (the model might split it otherwise)."""


def enable_sequences(llm: Llama, n: int) -> None:
    """Give `llm` a context with `n` sequences over one unified KV cache.

    llama-cpp-python creates single-sequence contexts, so the context is replaced right
    after loading (nothing is in it yet). Sequence 0 behaves as before: one sequence
    alone uses the whole cache, and `Llama` itself only ever touches sequence 0.
    """
    params = llm.context_params
    params.n_seq_max = n
    params.kv_unified = True  # shared prefix cells are referenced, not copied per sequence
    context = internals.LlamaContext(model=llm._model, params=params, verbose=False)
    old, llm._ctx = llm._ctx, context
    llm._stack.enter_context(contextlib.closing(context))
    old.close()


def sequences(llm: Llama) -> int:
    """How many sequences `llm`'s context can decode together."""
    return int(llama_cpp.llama_n_seq_max(llm.ctx))


def max_tokens(llm: Llama, prompt: int, requested: int) -> int:
    """`create_completion`'s output limit: unlimited (<= 0) or too many for the context
    means whatever room the context has left after the prompt."""
    room = llm.n_ctx() - prompt
    return room if requested <= 0 or requested + prompt >= llm.n_ctx() else requested


@dataclass(eq=False)
class _Sequence:
    """A job's progress: its tokens so far, what is already in the KV cache, its text."""

    seq: int
    job: Job
    llm: Llama
    limit: int
    sampler: ctypes.c_void_p | None
    """The sampler chain, or None for greedy decoding under a grammar (`grammar`)."""
    grammar: ctypes.c_void_p | None
    stream: list[int] = field(default_factory=list)
    """Prompt then generated tokens; the first `n_past` are in the KV cache."""
    n_past: int = 0
    completion: list[int] = field(default_factory=list)
    multibyte_fix: int = 0
    shared: int = 0
    output: Output | None = None
    choices: list[bytes] = field(default_factory=list)
    """`Job.choices` as bytes, when a grammar enforces them."""

    @property
    def pending(self) -> list[int]:
        return self.stream[self.n_past :]

    def sample(self, row: int) -> int:
        """The next token, from the logits of batch row `row`.

        Greedy decoding under a grammar takes the best token if the grammar allows it
        and filters the whole vocabulary only if not (what llama.cpp's own server does):
        the same token as filtering first, at a fraction of the cost.
        """
        ctx = self.llm.ctx
        if self.grammar is None:
            return int(llama_cpp.llama_sampler_sample(self.sampler, ctx, row))
        n_vocab = self.llm.n_vocab()
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, row), shape=(n_vocab,))
        token = int(np.argmax(logits))
        one = (llama_cpp.llama_token_data * 1)(llama_cpp.llama_token_data(token, logits[token], 0))
        single = llama_cpp.llama_token_data_array(one, 1, -1, False)
        llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(single))
        if one[0].logit == -np.inf:  # not allowed: the best of what is
            candidates = internals.LlamaTokenDataArray(n_vocab=n_vocab)
            candidates.copy_logits(logits)
            llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(candidates.candidates))
            token = int(np.argmax(candidates.candidates_data.logit))
        llama_cpp.llama_sampler_accept(self.grammar, token)
        return token

    def free(self) -> None:
        for sampler in (self.sampler, self.grammar):
            if sampler is not None:
                llama_cpp.llama_sampler_free(sampler)

    def accept(self, token: int) -> bool:
        """Take a sampled token; False when the completion is finished.

        The rules are `Llama._create_completion`'s (llama-cpp-python 0.3): an end token
        stops without being kept, a stop string cuts the text (the first listed one that
        occurs), the limit counts tokens, and a token ending inside a UTF-8 character
        defers the stop and limit checks until the character is complete.
        """
        llm = self.llm
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
            self._finish(llm.detokenize(self.completion), "stop")
            return False
        self.completion.append(token)
        self.stream.append(token)
        text = llm.detokenize(self.completion)
        for k, char in enumerate(text[-3:]):
            k = 3 - k
            for num, pattern in ((2, 192), (3, 224), (4, 240)):
                if num > k and pattern & char == pattern:
                    self.multibyte_fix = num - k
        if self.multibyte_fix > 0:
            self.multibyte_fix -= 1
            return True
        stops = [stop for stop in self.job.stop if stop.encode("utf-8") in text]
        if stops:
            self._finish(text[: text.index(stops[0].encode("utf-8"))], "stop")
            return False
        if (rest := self._forced_rest(text)) is not None:
            forced = llm.tokenize(rest, add_bos=False, special=False) if rest else []
            self.completion += forced
            self._finish(text + rest, "stop")
            assert self.output is not None
            self.output.forced = len(forced)
            return False
        if len(self.completion) >= self.limit:
            self._finish(text, "length")
            return False
        return True

    def _forced_rest(self, text: bytes) -> bytes | None:
        """The rest of the only choice the text so far can become, when decoding it
        could only spell it out and end: no other choice starts with the text, no stop
        string occurs in the choice, and it ends (in at most one token per byte) before
        the limit. Then the same text and ending come out as from decoding every token,
        without the decode steps (for an enum, usually all of them after the first)."""
        matching = [c for c in self.choices if c.startswith(text)]
        if len(matching) != 1:
            return None
        choice = matching[0]
        if any(stop.encode("utf-8") in choice for stop in self.job.stop):
            return None
        rest = choice[len(text) :]
        return rest if len(self.completion) + len(rest) < self.limit else None

    def _finish(self, text: bytes, reason: str) -> None:
        text_str = text.decode("utf-8", errors="ignore")
        self.output = Output(text_str, self.completion, reason, self.shared)


def _grammar_sampler(llm: Llama, grammar: LlamaGrammar) -> ctypes.c_void_p:
    sampler = llama_cpp.llama_sampler_init_grammar(
        llm._model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8")
    )
    if not sampler:
        raise BatchError("llama.cpp could not parse a grammar")
    return sampler


def _samplers(llm: Llama, job: Job) -> tuple[ctypes.c_void_p | None, ctypes.c_void_p | None]:
    """The sampler chain `Llama._init_sampler` builds for these arguments (its penalties
    sampler left out: with the default penalties it changes nothing); for greedy
    decoding under a grammar, the grammar alone (see `_Sequence.sample`)."""
    if job.grammar is not None and job.temperature == 0:
        return None, _grammar_sampler(llm, job.grammar)
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())

    def add(sampler: ctypes.c_void_p | None) -> None:
        if not sampler:
            raise BatchError("llama.cpp could not create a sampler")
        llama_cpp.llama_sampler_chain_add(chain, sampler)

    try:
        if job.grammar is not None:
            add(_grammar_sampler(llm, job.grammar))
        if job.temperature == 0:
            add(llama_cpp.llama_sampler_init_greedy())
        else:
            if job.temperature > 0:
                add(llama_cpp.llama_sampler_init_top_k(40))
                add(llama_cpp.llama_sampler_init_typical(1.0, 1))
                add(llama_cpp.llama_sampler_init_top_p(0.95, 1))
                add(llama_cpp.llama_sampler_init_min_p(0.05, 1))
                add(llama_cpp.llama_sampler_init_temp(job.temperature))
            add(llama_cpp.llama_sampler_init_dist(job.seed))
    except BaseException:
        llama_cpp.llama_sampler_free(chain)
        raise
    return chain, None


def run(llm: Llama, jobs: Sequence[Job], done: Callable[[int, Output], None]) -> None:
    """Run `jobs` together; `done(i, output)` is called as soon as job i finishes.

    Sequence 0 must hold `llm`'s tracked tokens (`llm.input_ids[:llm.n_tokens]`) and
    each job's `reused` prefix must be among them. Job 0 runs in sequence 0; afterwards
    the other sequences are gone and sequence 0 holds job 0's prompt and generated
    tokens, tracked as `Llama.create_completion` would leave them. Raises BatchError
    (and leaves an empty context) if llama.cpp fails; finished jobs were reported.
    """
    if len(jobs) > sequences(llm):
        raise ValueError(f"{len(jobs)} jobs for a context of {sequences(llm)} sequences")
    memory = llama_cpp.llama_get_memory(llm.ctx)
    states: list[_Sequence] = []
    batch = llama_cpp.llama_batch_init(llm.n_batch, 0, len(jobs))
    ok = False
    try:
        for seq, job in enumerate(jobs):
            limit = max_tokens(llm, len(job.tokens), job.max_tokens)
            state = _Sequence(seq, job, llm, limit, *_samplers(llm, job))
            state.stream, state.n_past = job.tokens.tolist(), job.reused
            if job.grammar is not None:
                state.choices = [choice.encode("utf-8") for choice in job.choices]
            states.append(state)
        for state in states[1:]:
            llama_cpp.llama_memory_seq_rm(memory, state.seq, -1, -1)
            llama_cpp.llama_memory_seq_cp(memory, 0, state.seq, 0, state.n_past)
        if not llama_cpp.llama_memory_seq_rm(memory, 0, states[0].n_past, -1):
            raise BatchError("this model cannot drop part of its KV cache")
        _decode_prompts(llm, states, batch, done)
        _decode_all(llm, [state for state in states if state.output is None], batch, done)
        ok = True
    finally:
        llama_cpp.llama_batch_free(batch)
        for state in states:
            state.free()
            if state.seq:
                llama_cpp.llama_memory_seq_rm(memory, state.seq, -1, -1)
        if ok:
            first = states[0]
            llm.input_ids[: first.n_past] = first.stream[: first.n_past]
            llm.n_tokens = first.n_past
        else:
            llama_cpp.llama_memory_clear(memory, True)
            llm.n_tokens = 0
        llm._requires_eval = True  # the context's logits are not sequence 0's


_Entry = tuple[int, int, list[_Sequence], _Sequence | None]
"""A batch entry: token, position, the sequences it belongs to, the sequence to sample
after it (for a prompt's last token)."""


def _prompt_entries(states: list[_Sequence]) -> list[_Entry]:
    """The prompt tokens still to evaluate, each common run evaluated once.

    Sequences starting at the same position whose prompts go on alike share one batch
    entry per common token (llama.cpp puts the cell in all of them): a token trie,
    parents before children. A prompt's last token is always its own, for its logits.
    The first sequence of a shared entry is charged for it; the others count it shared.
    """
    entries: list[_Entry] = []
    starts: dict[int, list[_Sequence]] = {}
    for state in states:
        starts.setdefault(state.n_past, []).append(state)
    stack = [(group, 0) for group in starts.values()]
    while stack:
        group, offset = stack.pop()
        if len(group) == 1:  # the rest of one prompt
            (state,) = group
            pending = state.pending
            for i in range(offset, len(pending)):
                last = i == len(pending) - 1
                entries.append((pending[i], state.n_past + i, [state], state if last else None))
            continue
        branches: dict[int, list[_Sequence]] = {}
        for state in group:
            pending = state.pending
            if offset == len(pending) - 1:
                entries.append((pending[offset], state.n_past + offset, [state], state))
            else:
                branches.setdefault(pending[offset], []).append(state)
        for token, members in branches.items():
            if len(members) > 1:
                entries.append((token, members[0].n_past + offset, members, None))
                for state in members[1:]:
                    state.shared += 1
                stack.append((members, offset + 1))
            else:
                stack.append((members, offset))
    return entries


def _decode_prompts(
    llm: Llama,
    states: list[_Sequence],
    batch: llama_cpp.llama_batch,
    done: Callable[[int, Output], None],
) -> None:
    """Evaluate every prompt's remaining tokens, n_batch entries at a time, sampling
    each sequence's first token after the batch holding its prompt's last token."""
    entries = _prompt_entries(states)
    for start in range(0, len(entries), llm.n_batch):
        chunk = entries[start : start + llm.n_batch]
        rows = []
        for i, (token, pos, members, sample) in enumerate(chunk):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = len(members)
            for k, member in enumerate(members):
                batch.seq_id[i][k] = member.seq
            batch.logits[i] = sample is not None
            if sample is not None:
                rows.append((sample, i))
        batch.n_tokens = len(chunk)
        code = llama_cpp.llama_decode(llm.ctx, batch)
        if code != 0:
            raise BatchError(f"llama_decode returned {code}")
        for state, row in rows:
            state.n_past = len(state.job.tokens)
            if not state.accept(state.sample(row)):
                done(state.seq, state.output)  # type: ignore[arg-type]


def _decode_all(
    llm: Llama,
    states: list[_Sequence],
    batch: llama_cpp.llama_batch,
    done: Callable[[int, Output], None],
) -> None:
    """Decode until every sequence is finished: each step packs every unfinished
    sequence's next token (up to n_batch pending tokens) into one batch."""
    active = list(states)
    while active:
        for state in active:
            if state.output is None and state.job.cancelled():
                state._finish(b"", "stop")  # the caller gave up: nobody reads it
                done(state.seq, state.output)  # type: ignore[arg-type]
        active = [state for state in active if state.output is None]
        batch.n_tokens = 0
        filled: list[tuple[_Sequence, int]] = []
        rows: list[tuple[_Sequence, int]] = []
        for state in active:
            tokens = state.pending[: llm.n_batch - batch.n_tokens]
            if not tokens:
                break
            for offset, token in enumerate(tokens):
                i = batch.n_tokens + offset
                batch.token[i] = token
                batch.pos[i] = state.n_past + offset
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = state.seq
                batch.logits[i] = False
            batch.n_tokens += len(tokens)
            filled.append((state, len(tokens)))
            if len(tokens) == len(state.pending):  # its last token: sample after it
                batch.logits[batch.n_tokens - 1] = True
                rows.append((state, batch.n_tokens - 1))
        if not filled:
            return
        code = llama_cpp.llama_decode(llm.ctx, batch)
        if code != 0:
            raise BatchError(f"llama_decode returned {code}")
        for state, n in filled:
            state.n_past += n
        for state, row in rows:
            if not state.accept(state.sample(row)):
                done(state.seq, state.output)  # type: ignore[arg-type]
        active = [state for state in active if state.output is None]
