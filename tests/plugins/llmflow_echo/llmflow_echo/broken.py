"""A second kind of this distribution that fails on import, as a plugin with a missing
dependency does: llmflow must say whose it is, without a traceback."""

import llmflow_missing_dependency  # noqa: F401
