"""Serving a model's queue: one worker thread per busy model, one call (or batch) at a time.

Prefill is most of a small model's time on a CPU, so a worker makes the optimizer's
prefix groups pay off: it runs a group's calls back to back (their shared prefix stays in
the context), saves the KV state after a group's shared prefix (`states`), and serves
the waiting optimized calls that share the chosen call's prefix with it, as parallel
sequences of one llama.cpp batch (`batch`).
"""

from __future__ import annotations

import contextlib
import time

import numpy as np
from llama_cpp import Llama, StoppingCriteriaList

from llmflow.runtime.backends.base import BackendError, Generation
from llmflow.runtime.backends.local import batch
from llmflow.runtime.backends.local.loading import _load, _Model, _prompt_tokens
from llmflow.runtime.backends.local.queue import _Call, _next_call
from llmflow.runtime.backends.local.states import (
    _common_prefix,
    _restore,
    _save,
    _state_size,
    _StateCache,
    _truncate,
)

DEFAULT_SEED = 0
"""Sampling seed when a request sets none, so runs are reproducible."""


def _llama_seed(seed: int | None) -> int:
    """The request's seed as llama.cpp takes it: a uint32 other than 2**32 - 1, which
    means "random" there (a run's derived seeds are below 2**31 anyway)."""
    return DEFAULT_SEED if seed is None else seed % 0xFFFFFFFF


_GROUP_HISTORY = 256
"""Groups whose last prompt a model remembers, to find what each group shares."""


class _Worker:
    """Serves the calls queued on a backend's models, on worker threads; the saved
    states of all models are shared."""

    def __init__(self, states: _StateCache) -> None:
        self.states = states

    def serve(self, model: _Model) -> None:
        """Drain the model's queue on this thread, one call at a time, then stop."""
        try:
            while self._serve_next(model):
                pass
        except BaseException as error:  # a bug here must not leave callers waiting forever
            with model.mutex:
                failed, model.waiting, model.serving = model.waiting, [], False
            for call in failed:
                _settle(call, error=BackendError(f"model '{model.spec.name}' failed: {error}"))
            raise

    def _serve_next(self, model: _Model) -> bool:
        """Serve the next call; False when the queue is empty (and the worker done)."""
        with model.busy:
            with model.mutex:
                if not model.waiting:
                    model.serving = False
                    return False
            try:
                llm = model.llm if model.llm is not None else _load(model)
            except BackendError as error:
                with model.mutex:
                    failed, model.waiting = model.waiting, []
                for call in failed:
                    _settle(call, error=error)
                return True
            call = self._take(model, llm)
            if call is None:
                return True
            if not call.fifo:
                self._serve_together(model, llm, call)
                return True
            try:
                result = self._generate(model, llm, call)
            except Exception as error:  # BackendError, or a bug: report it, never hang
                _settle(call, error=error)
            else:
                _settle(call, result=result)
            return True

    def _serve_together(self, model: _Model, llm: Llama, call: _Call) -> None:
        """Serve an optimized call, and with it the waiting calls that share its prefix.

        The call's prefix goes into the context as for a call alone (`_prefill`: saved
        states, save points); then the waiting optimized calls sharing at least
        `reuse_min_tokens` with the context join it as parallel sequences. Each
        result is handed over as soon as its call finishes.
        """
        started = time.perf_counter()
        try:
            tokens = self._checked_tokens(model, llm, call)
            cached = self._prefill(model, llm, call, tokens)
        except Exception as error:  # BackendError, llama.cpp failures, or a bug
            _settle(call, error=_failure(model, error))
            return
        finally:
            model.last_group = call.request.group
        first = min(_common_prefix(llm._input_ids, tokens), len(tokens) - 1)
        limit = batch.max_tokens(llm, len(tokens), call.request.max_tokens)
        room = llm.n_ctx() - llm.n_tokens - (len(tokens) - first + limit)
        served = [(call, first, cached), *self._companions(model, llm, room)]
        jobs = [
            batch.Job(
                tokens=self._tokens(model, llm, c),
                reused=reused,
                max_tokens=c.request.max_tokens,
                temperature=c.request.temperature,
                seed=_llama_seed(c.request.seed),
                stop=[stop for stop in c.request.stop if stop],
                grammar=c.grammar,
                choices=_choices(c),
                cancelled=c.cancelled.is_set,
            )
            for c, reused, _ in served
        ]

        def done(index: int, output: batch.Output) -> None:
            c, _, cached = served[index]
            result = Generation(
                text=output.text,
                input_tokens=len(jobs[index].tokens),
                output_tokens=len(output.tokens),
                cached_tokens=cached + output.shared,
                seconds=time.perf_counter() - started,
                finish_reason=output.finish_reason,
            )
            _settle(c, result=result)

        try:
            batch.run(llm, jobs, done)
        except Exception as error:  # finished calls are settled already; this does not
            for c, _, _ in served:  # change them
                _settle(c, error=_failure(model, error))

    def _companions(self, model: _Model, llm: Llama, room: int) -> list[tuple[_Call, int, int]]:
        """Dequeue the waiting optimized calls that share at least the model's
        `reuse_min_tokens` with the context, longest share first, as many as the context has
        sequences and KV cells (`room`) for; each with its shared length, twice (the
        tokens it starts from, the tokens it reports as cached)."""
        with model.mutex:
            waiting = [c for c in model.waiting if not c.fifo]
        shares = []
        for c in waiting:
            try:
                tokens = self._checked_tokens(model, llm, c)
            except BackendError:
                continue  # reported when the call is served alone
            shared = min(_common_prefix(llm._input_ids, tokens), len(tokens) - 1)
            if shared >= model.reuse_min_tokens:
                shares.append((c, shared))
        shares.sort(key=lambda cs: (-cs[1], -cs[0].request.priority, cs[0].order))
        chosen = []
        for c, shared in shares[: batch.sequences(llm) - 1]:
            assert c.tokens is not None
            limit = batch.max_tokens(llm, len(c.tokens), c.request.max_tokens)
            if (need := len(c.tokens) - shared + limit) <= room:
                room -= need
                chosen.append((c, shared, shared))
        with model.mutex:
            chosen = [choice for choice in chosen if choice[0] in model.waiting]
            for c, _, _ in chosen:
                model.waiting.remove(c)
        return chosen

    def _take(self, model: _Model, llm: Llama) -> _Call | None:
        """Choose and dequeue the next call (None if it was cancelled meanwhile)."""
        with model.mutex:
            waiting = list(model.waiting)
        if not waiting:
            return None
        call = _next_call(
            waiting,
            model.last_group,
            lambda c: self._reusable(model, llm, c),
            model.reuse_min_tokens,
        )
        with model.mutex:
            if call not in model.waiting:
                return None
            model.waiting.remove(call)
        return call

    def _reusable(self, model: _Model, llm: Llama, call: _Call) -> int:
        """Prompt tokens of `call` found in the context or (grouped calls) a saved state."""
        try:
            tokens = self._tokens(model, llm, call)
        except BackendError:
            return 0  # reported when the call is served
        length = _common_prefix(llm._input_ids, tokens)
        if not call.fifo:
            length = max(length, self.states.longest(model.spec.name, tokens)[1])
        return length

    def _generate(self, model: _Model, llm: Llama, call: _Call) -> Generation:
        """Run one call on the worker thread (blocking)."""
        request = call.request
        started = time.perf_counter()
        tokens = self._checked_tokens(model, llm, call)
        try:
            reused = self._prefill(model, llm, call, tokens)
            result = llm.create_completion(
                prompt=tokens.tolist(),
                max_tokens=request.max_tokens,
                temperature=request.temperature,
                stop=[stop for stop in request.stop if stop],
                seed=_llama_seed(request.seed),
                grammar=call.grammar,
                stopping_criteria=StoppingCriteriaList(
                    [lambda _ids, _logits: call.cancelled.is_set()]
                ),
            )
        except (RuntimeError, ValueError) as error:  # llama.cpp decode failures
            raise BackendError(f"model '{model.spec.name}' failed: {error}") from None
        finally:
            model.last_group = request.group
        choice = result["choices"][0]  # type: ignore[index]
        usage = result["usage"]  # type: ignore[index]
        return Generation(
            text=choice["text"],
            input_tokens=usage["prompt_tokens"],
            output_tokens=usage["completion_tokens"],
            cached_tokens=reused,
            seconds=time.perf_counter() - started,
            finish_reason=choice["finish_reason"],
        )

    def _prefill(self, model: _Model, llm: Llama, call: _Call, tokens: np.ndarray) -> int:
        """Put the longest known prefix of the prompt in the context; return its length.

        `create_completion` then keeps the context's common prefix with the prompt and
        evaluates the rest, always including the last prompt token (for its logits).
        An -O0 call gets only that reuse of the previous call's prefix. An optimized call
        (one with a group or a priority) first restores a saved state if it beats the
        context by the model's `reuse_min_tokens`, then evaluates the rest of its prompt in
        steps, saving the state where it stops sharing with its group (`_shared`) and
        before its last token, so later calls find their prefix even if other prompts ran
        between; a short tail that waiting calls do not share is left to their batch.
        """
        last = len(tokens) - 1
        reused = _common_prefix(llm._input_ids, tokens)
        group = call.request.group
        if call.fifo:
            return min(reused, last)
        name = model.spec.name
        least = model.reuse_min_tokens
        state, in_state = self.states.longest(name, tokens)
        if state is not None and in_state >= reused + least:
            if _restore(llm, state):
                self.states.touch(state)
                reused = in_state
            else:
                reused = in_state = 0
        reused = min(reused, last)
        # Save points: where the prompt stops sharing with its group, and its whole
        # prompt (but the last token), since a later call may share any prefix of it
        # (an item of one map reading what an item of another map read).
        points = [last]
        shared, siblings = self._shared(model, llm, call, tokens)
        if group is not None:
            model.group_prompts[group] = tokens
            model.group_prompts.move_to_end(group)
            if len(model.group_prompts) > _GROUP_HISTORY:
                model.group_prompts.popitem(last=False)
        points.insert(0, shared)
        if siblings and shared >= least and last - shared < 2 * least:
            # A short tail after the shared prefix is cheaper evaluated in the batch
            # with the waiting siblings'. A call alone keeps its whole prompt: the
            # group's next call may extend it (a conversation, a growing transcript).
            points.pop()
        points = [p for p in points if p >= least and p > max(in_state, reused)]
        if not points:
            return reused
        if not _truncate(llm, reused):
            return 0  # this model cannot drop part of its cache; llama.cpp starts over
        done = reused
        for end in sorted(set(points)):
            llm.eval(tokens[done:end].tolist())
            done = end
            if (size := _state_size(llm)) <= model.state_limit:
                self.states.add(_save(llm, name, size), model.state_limit)
        return reused

    def _shared(
        self, model: _Model, llm: Llama, call: _Call, tokens: np.ndarray
    ) -> tuple[int, bool]:
        """How much of the prompt others share: the longest common prefix with a waiting
        call of its group or with the group's previous prompt (for an ungrouped
        optimized call, with a waiting ungrouped one: the rows of a dataset run calling
        one function, a call each); all but the last token when no such call is known.
        And whether such calls are waiting."""
        group = call.request.group
        with model.mutex:
            siblings = [c for c in model.waiting if not c.fifo and c.request.group == group]
        others = []
        for sibling in siblings:
            with contextlib.suppress(BackendError):
                others.append(self._tokens(model, llm, sibling))
        if group is not None and (previous := model.group_prompts.get(group)) is not None:
            others.append(previous)
        longest = max((_common_prefix(tokens, other) for other in others), default=len(tokens))
        return min(longest, len(tokens) - 1), bool(siblings)

    def _checked_tokens(self, model: _Model, llm: Llama, call: _Call) -> np.ndarray:
        """The call's prompt tokens, if the model can take them."""
        tokens = self._tokens(model, llm, call)
        if not len(tokens):
            raise BackendError(f"empty prompt for model '{model.spec.name}'")
        if len(tokens) >= llm.n_ctx():
            raise BackendError(
                f"the prompt ({len(tokens)} tokens) does not fit the context of "
                f"model '{model.spec.name}' ({llm.n_ctx()} tokens)"
            )
        return tokens

    def _tokens(self, model: _Model, llm: Llama, call: _Call) -> np.ndarray:
        """The call's prompt tokens, computed once."""
        if call.error is not None:
            raise call.error
        if call.tokens is None:
            try:
                call.tokens = np.array(_prompt_tokens(model, llm, call.request), dtype=np.intc)
            except BackendError as error:
                call.error = error
                raise
        return call.tokens


def _choices(call: _Call) -> list[str]:
    """The strings a call's grammar chooses among, if it is a choice (an enum)."""
    constraint = call.request.constraint
    return list(constraint.choices or ()) if constraint is not None else []


def _failure(model: _Model, error: BaseException) -> BaseException:
    """What a caller is told when serving its call raised `error`."""
    if isinstance(error, RuntimeError | ValueError):  # llama.cpp failures, BatchError
        return BackendError(f"model '{model.spec.name}' failed: {error}")
    return error  # a BackendError, or a bug: reported as it is, never hangs a caller


def _settle(
    call: _Call, result: Generation | None = None, error: BaseException | None = None
) -> None:
    """Hand a worker's outcome to the caller's event loop (unless the caller gave up)."""

    def settle() -> None:
        if call.future.done():
            return
        if error is not None:
            call.future.set_exception(error)
        else:
            call.future.set_result(result)  # type: ignore[arg-type]

    with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody waits
        call.loop.call_soon_threadsafe(settle)
