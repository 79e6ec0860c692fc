"""Label selectors (matchLabels and matchExpressions) compiled once into a match test."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: str  # In, NotIn, Exists, DoesNotExist
    values: frozenset[str]

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        if self.operator == "In":
            return labels.get(self.key) in self.values
        # NotIn: a missing key is "not in" any set, as the API defines it
        return self.key not in labels or labels[self.key] not in self.values


@dataclass(frozen=True, slots=True)
class Selector:
    """Every requirement must hold (AND); no requirement at all selects everything."""

    requirements: tuple[Requirement, ...]

    @property
    def everything(self) -> bool:
        return not self.requirements

    def matches(self, labels: Mapping[str, str]) -> bool:
        for r in self.requirements:  # noqa: SIM110 (all() over a generator costs more)
            if not r.matches(labels):
                return False
        return True


EVERYTHING = Selector(())


def parse(obj: Any, where: str) -> Selector:
    """A Selector from the API's dict; ValueError naming ``where`` on a malformed one."""
    if obj is None:
        return EVERYTHING
    if not isinstance(obj, Mapping):
        raise ValueError(f"{where} is not an object")
    reqs: list[Requirement] = []
    labels = obj.get("matchLabels") or {}
    if not isinstance(labels, Mapping):
        raise ValueError(f"{where}.matchLabels is not an object")
    for k, v in labels.items():
        reqs.append(Requirement(str(k), "In", frozenset((str(v),))))
    for i, expr in enumerate(obj.get("matchExpressions") or ()):
        op = expr.get("operator") if isinstance(expr, Mapping) else None
        key = expr.get("key") if isinstance(expr, Mapping) else None
        if op not in _OPERATORS or not key:
            raise ValueError(f"{where}.matchExpressions[{i}] has operator {op!r} key {key!r}")
        values = frozenset(str(v) for v in expr.get("values") or ())
        if op in ("In", "NotIn") and not values:
            raise ValueError(f"{where}.matchExpressions[{i}] {op} needs values")
        if op in ("Exists", "DoesNotExist") and values:
            raise ValueError(f"{where}.matchExpressions[{i}] {op} takes no values")
        reqs.append(Requirement(str(key), op, values))
    # sorted: two spellings of one selector compare (and hash) equal
    return Selector(tuple(sorted(reqs, key=lambda r: (r.key, r.operator, sorted(r.values)))))
