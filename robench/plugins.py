"""User models from installed packages: the ``robench.models`` entry-point group.

A package that registers models with ``@model_zoo.register_model`` declares, in its metadata::

    [project.entry-points."robench.models"]
    mynet = "mypkg.models"          # a module (importing it registers its models) or mypkg.models:mynet

:func:`load_plugins` loads every entry point of the group once per process (importing runs the
``@register_model`` decorators), before a model name is looked up. The zoo still needs trained
weights for such a model (``robench train`` or ``model_zoo.save``), or evaluate the module itself
with ``robench.evaluate(model=net, name=...)``.
"""
from __future__ import annotations

from importlib.metadata import entry_points

from robench.errors import BadInput

GROUP = "robench.models"
_loaded: set[str] = set()


def load_plugins() -> list[str]:
    """Load each entry point of :data:`GROUP` not loaded yet; → the names loaded now.
    A plugin that fails to import is bad input naming its entry point."""
    new = []
    for ep in entry_points(group=GROUP):
        ident = f"{ep.name}={ep.value}"
        if ident in _loaded:
            continue
        _loaded.add(ident)
        try:
            ep.load()
        except Exception as e:  # a third-party import can fail in any way; say which plugin and why
            raise BadInput(f"model plugin {ident} ({GROUP} entry point) failed to load: "
                           f"{type(e).__name__}: {' '.join(str(e).split())}") from None
        new.append(ep.name)
    return new
