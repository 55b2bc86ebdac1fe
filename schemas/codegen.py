"""Straight-line code generated once per configuration: the one helper that compiles it.

Used by the codec (pattern checks of its fast decoders) and by the detectors' hot
paths (re-exported as ``detectors.base.compiled_function``); it lives here, in the
lowest layer, so that the codec does not import the detectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def compiled_function(lines: Sequence[str], label: str, name: str,
                      namespace: dict[str, Any] | None = None) -> Any:
    """The function ``name`` defined by the generated source ``lines``, compiled under
    ``label`` (the file name tracebacks and profilers show); ``namespace`` holds the
    names the source reads (e.g. values bound as defaults). The straight-line code the
    hot paths generate once per configuration is built with this.

    >>> compiled_function(["def twice(x, k=k):", " return k * x"], "<doc>", "twice",
    ...                   {"k": 2})(21)
    42
    """
    scope: dict[str, Any] = dict(namespace or {})
    exec(compile("\n".join(lines), label, "exec"), scope)
    return scope[name]
