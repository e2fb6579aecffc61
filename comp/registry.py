"""Named choices with one source each: loss terms, augmentation presets, TTA views, LR schedules, face
detectors, blend methods. A registry maps a name to its implementation and lives beside it; config checks,
CLI help and error messages read the names from the registry, so adding an entry is one decorated
function and nothing else can fall out of step."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from .errors import CompError

T = TypeVar("T")
_DECORATE = object()


class Registry(dict[str, Any]):
    """name → implementation. `what` names the kind of thing in messages ("loss", "TTA view set");
    `key` is the config key or option that takes the names ("loss.terms", "--method")."""

    def __init__(self, what: str, key: str):
        super().__init__()
        self.what, self.key = what, key

    def register(self, name: str, obj: Any = _DECORATE) -> Callable[[T], T] | Any:
        """`@REG.register("name")` on a function or class, or `REG.register("name", obj)`."""
        if name in self:
            raise ValueError(f"{self.what} {name!r} registered twice")
        if obj is not _DECORATE:
            self[name] = obj
            return obj

        def add(o: T) -> T:
            self[name] = o
            return o
        return add

    @property
    def choices(self) -> str:
        """The names for help texts: 'a | b | c'."""
        return " | ".join(self)

    def check(self, name: str, key: str | None = None, source: str = "") -> None:
        """A CompError naming the source (a file), the key or option (default `self.key`) and the valid
        names, when `name` is not registered."""
        if name not in self:
            raise CompError(f"{source + ': ' if source else ''}{key or self.key}={name!r} is not a known "
                            f"{self.what}; choose one of {', '.join(self)}")

    def resolve(self, name: str, key: str | None = None, source: str = "") -> Any:
        """The implementation registered under `name`, or a CompError listing the valid names."""
        self.check(name, key, source)
        return self[name]
