"""Package attributes that load their module on first use (PEP 562 module ``__getattr__``).

``harness`` and ``harness.runner`` re-export names whose modules pull in pandas, numpy and Quart;
importing them eagerly would make every ``harness`` command pay for those before parsing its
arguments (SPEC §5, issue 20: ``harness --help`` answers at once).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_exports(package: str, homes: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports ``homes[name]`` (relative) when asked."""
    namespace = import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(home, package), name)
        namespace[name] = value  # from now on a plain attribute
        return value

    return __getattr__
