"""The `giellm_backends` registry.

Created through spaCy's catalogue so that `@spacy.registry.giellm_backends(...)`
works and other packages can add backends through the `giellm_backends`
entry point group, the way spacy-transformers adds its own registries.
"""
from spacy.util import registry

if not hasattr(registry, "giellm_backends"):
    registry.create("giellm_backends", entry_points=True)

giellm_backends = registry.giellm_backends
