"""The embedded backend: GGUF models run in-process by llama.cpp.

Embedded models ship as PyPI packages, so a program runs with no server and no
download. Each model is loaded on first use and serves one call at a time (llama.cpp
keeps one KV cache per context); different models run in parallel threads.

Prefill is most of a small model's time on a CPU, so the backend makes the optimizer's
prefix groups pay off: calls waiting for a model are served by one worker that runs a
group's calls back to back (their shared prefix stays in the context), and the KV state
after a group's shared prefix is saved in a memory-bounded LRU, so a call of the group
arriving after other prompts restores it instead of evaluating the prefix again. The
optimized calls waiting when one is served that share its prefix run with it, as
parallel sequences of one llama.cpp batch (`batch`): the prefix is evaluated once
and the calls' suffixes and outputs are decoded together, at a large batch's rate (a
call needs no group for that: the rows of a dataset run, a call each, meet there too),
and an answer among choices (an enum) stops being decoded once its first tokens decide
which choice it is.
Ungrouped calls of priority 0 (-O0) are served first come, first served, and reuse only
what llama.cpp keeps of the previous call's prompt.

The package, by concern: `files` (finding and assembling GGUF files), `grammars`
(constraints as llama.cpp grammars), `states` (the saved KV states), `queue` (which
waiting call runs next), `loading` (a model's slot, loading it, its prompt tokens),
`worker` (serving a model's queue), `batch` (several calls decoded in one context) and
`backend` (`LocalBackend`).
"""

from llmflow.runtime.backends.local import batch
from llmflow.runtime.backends.local.backend import LocalBackend
from llmflow.runtime.backends.local.files import cache_dir, find_model_file
from llmflow.runtime.backends.local.states import DEFAULT_STATE_CACHE_MB
from llmflow.runtime.backends.local.worker import DEFAULT_SEED

__all__ = [
    "DEFAULT_SEED",
    "DEFAULT_STATE_CACHE_MB",
    "LocalBackend",
    "batch",
    "cache_dir",
    "find_model_file",
]
