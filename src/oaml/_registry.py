"""A tiny name -> factory registry (one per model family), after timm's ``_registry``."""

from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories.

    Args:
        kind: what the registry holds, used in error messages ("backbone", "head").
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator that stores a factory under ``name``.

        Raises:
            ValueError: if ``name`` is already registered.
        """

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._factories[name] = factory
            return factory

        return decorator

    def build(self, name: str, **kwargs: Any) -> T:
        """Build the object registered under ``name``.

        Raises:
            ValueError: if ``name`` is unknown; the message lists the valid names.
        """
        if name not in self._factories:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}")
        return self._factories[name](**kwargs)

    def names(self) -> list[str]:
        """The registered names, in registration order (ir_18 before ir_101)."""
        return list(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories
