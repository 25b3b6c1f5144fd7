"""Delegation to a wrapped memorizz provider: everything the wrapper does not define.

memorizz looks at its provider in several ways, and each must see the wrapped one:
attributes and methods (`__getattr__`), attributes it sets on the provider (its
memory-history instrumentation replaces write methods on the instance: forwarded, so
the wrapped provider's own calls see them too), `isinstance` and class-name checks
(`__class__`, which `isinstance` consults after the real type), and `dir()`.
"""

from __future__ import annotations

from typing import Any


class Delegating:
    """Forwards every attribute the subclass does not define to `_wrapped`."""

    _wrapped: Any

    def __init__(self, wrapped: Any) -> None:
        object.__setattr__(self, "_wrapped", wrapped)

    def _own(self, name: str) -> bool:
        """An attribute of the wrapper itself: its class's, or set in its __init__."""
        return hasattr(type(self), name) or name in object.__getattribute__(self, "__dict__")

    def __getattr__(self, name: str) -> Any:  # only for names not found on the wrapper
        if name == "_wrapped":  # not set yet (a half-built or unpickled instance)
            raise AttributeError(name)
        return getattr(self._wrapped, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if self._own(name):
            object.__setattr__(self, name, value)
        else:
            setattr(self._wrapped, name, value)

    def __delattr__(self, name: str) -> None:
        if self._own(name):
            object.__delattr__(self, name)
        else:
            delattr(self._wrapped, name)

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return type(self._wrapped)

    def __dir__(self) -> list[str]:
        return sorted(set(dir(type(self))) | set(dir(self._wrapped)))
