"""What a backend plugin imports: the kind base class, its settings base, the catalog
and capability declarations, and the backend interface. A plugin registers its
`BackendKind` subclass as an entry point in the group `llmflow.backends` (see
docs/architecture.md, "How to add a backend")."""

from llmflow.compiler.models import Capabilities, ModelSettings, ModelSpec, Timing
from llmflow.runtime.backends.base import (
    Backend,
    BackendError,
    Generation,
    GenerationRequest,
    Turn,
)
from llmflow.runtime.backends.registry import (
    GROUP,
    BackendKind,
    Catalog,
    ModelIdError,
    PluginError,
    settings_of,
)

__all__ = [
    "GROUP",
    "Backend",
    "BackendError",
    "BackendKind",
    "Capabilities",
    "Catalog",
    "Generation",
    "GenerationRequest",
    "ModelIdError",
    "ModelSettings",
    "ModelSpec",
    "PluginError",
    "Timing",
    "Turn",
    "settings_of",
]
