"""The object catalog: every data object, its parents, and the order objects are sent in.

This is the one place that knows the hierarchy. Everything else asks it.
"""

from __future__ import annotations

import csv
import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from functools import cache, cached_property
from importlib import resources

from messages.errors import CatalogError, UnknownObjectError

# Objects whose own rows a state can exclude from syncing; their descendants are excluded with them.
EXCLUDABLE = frozenset({"Calendar", "StructureGradeLevel", "Enrollment"})
# Objects not used unless a state enables them.
REPORTING_ENTITY = "ReportingEntity"
OPTIONAL = frozenset({REPORTING_ENTITY})


@dataclass(frozen=True)
class ObjectDef:
    name: str
    chain: tuple[str, ...]
    """Every ancestor, top first, as the vendor lists them (used for ordering and Check Dependencies)."""
    immediate: tuple[str, ...]
    year_scoped: bool
    inferred: bool
    note: str
    position: int

    @property
    def table(self) -> str:
        return snake(self.name)

    @cached_property
    def references(self) -> tuple[str, ...]:
        """Parents a record points at: its immediate parents, plus the calendar (and grade level)
        it belongs to when the object is tied to a school year."""
        refs = list(self.immediate)
        if self.year_scoped:
            refs += [p for p in ("Calendar", "StructureGradeLevel") if p in self.chain and p not in refs]
        return tuple(refs)

    @property
    def excludable(self) -> bool:
        return self.name in EXCLUDABLE


@cache
def snake(name: str) -> str:
    """``PersonIdentityNoStateIDOnly`` -> ``person_identity_no_state_id_only``."""
    s = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    s = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", s)
    return s.lower()


@cache
def ref_column(parent: str) -> str:
    return f"{snake(parent)}_ref_id"


class Catalog:
    """The objects of one deployment: the vendor's hierarchy restricted to the enabled objects."""

    def __init__(self, objects: Sequence[ObjectDef], enabled: Iterable[str] | None = None) -> None:
        self._all = {o.name: o for o in objects}
        if enabled is None:
            names = [o.name for o in objects if o.name not in OPTIONAL]
        else:
            names = [self._lookup(name, self._all).name for name in enabled]
        wanted = set(names)
        self.objects: dict[str, ObjectDef] = {o.name: o for o in objects if o.name in wanted}
        self._under: dict[str, str] = {}  # the parent an object is drawn under, where it is not its own
        if REPORTING_ENTITY in self.objects:
            self._between_district_and_below()
        for obj in self.objects.values():
            missing = [p for p in obj.chain if p not in self.objects]
            if missing:
                raise CatalogError(
                    f"{obj.name} is enabled but its parent(s) {', '.join(missing)} are not; "
                    "enable them too or disable it"
                )
        self._order = _topological(list(self.objects.values()))

    def _between_district_and_below(self) -> None:
        """A state that uses ReportingEntity puts it between District and every object below District (the
        vendor's hierarchy): it comes before them in every plan, Check Dependencies adds it, and the status
        table draws them under it. Records still point at the parents they have (a School at its District)."""
        for name, obj in list(self.objects.items()):
            if name in (REPORTING_ENTITY, "District") or "District" not in obj.chain:
                continue
            at = obj.chain.index("District") + 1
            self.objects[name] = replace(obj, chain=(*obj.chain[:at], REPORTING_ENTITY, *obj.chain[at:]))
            if obj.immediate[:1] == ("District",):
                self._under[name] = REPORTING_ENTITY

    # lookups --------------------------------------------------------------------------------

    def get(self, name: str) -> ObjectDef:
        return self._lookup(name, self.objects)

    def _lookup(self, name: str, pool: dict[str, ObjectDef]) -> ObjectDef:
        if name in pool:
            return pool[name]
        folded = {k.lower(): v for k, v in pool.items()}
        if name.lower() in folded:
            return folded[name.lower()]
        if name in self._all:
            raise CatalogError(f"object {name!r} is not enabled in this deployment (RESYNC_OBJECTS)")
        raise UnknownObjectError(name, difflib.get_close_matches(name, list(pool), n=3, cutoff=0.5))

    def knows(self, name: str) -> bool:
        """Whether ``name`` is an object of the vendor's catalog, enabled here or not."""
        return name in self._all

    def __contains__(self, name: object) -> bool:
        return name in self.objects

    def names(self) -> list[str]:
        """Every enabled object, parents before children."""
        return list(self._order)

    def children(self, name: str) -> list[str]:
        """Objects whose first immediate parent is ``name``: the tree the status table draws."""
        return [o for o in self._order if self._drawn_under(o) == name]

    def _drawn_under(self, name: str) -> str | None:
        return self._under.get(name) or next(iter(self.objects[name].immediate), None)

    def referrers(self, name: str) -> list[str]:
        """Enabled objects whose records point at a record of ``name`` (its children, in every sense)."""
        return [o for o in self._order if name in self.objects[o].references]

    def depth(self, name: str) -> int:
        above = self._drawn_under(self.get(name).name)
        return 0 if above is None else 1 + self.depth(above)

    # planning -------------------------------------------------------------------------------

    def closure(self, names: Iterable[str]) -> set[str]:
        """Check Dependencies: the picked objects plus every parent they need."""
        out: set[str] = set()
        for name in names:
            obj = self.get(name)
            out.add(obj.name)
            out.update(obj.chain)
        return out

    def plan(self, names: Iterable[str], *, check_dependencies: bool = False) -> list[str]:
        """The objects to send, parents first, ties kept in catalog order."""
        picked = {self.get(n).name for n in names}
        if check_dependencies:
            picked = self.closure(picked)
        return [n for n in self._order if n in picked]

    def tree(self) -> list[tuple[str, int]]:
        """(object, depth) in display order: each object under its first immediate parent."""
        out: list[tuple[str, int]] = []

        def walk(name: str, depth: int) -> None:
            out.append((name, depth))
            for child in self.children(name):
                walk(child, depth + 1)

        for name in self._order:
            if not self.objects[name].immediate:
                walk(name, 0)
        return out


def _topological(objects: list[ObjectDef]) -> list[str]:
    """Kahn's algorithm over 'every ancestor before its descendant', always taking the
    ready object that comes first in the catalog, so every plan agrees on order."""
    by_name = {o.name: o for o in objects}
    pending = {o.name: {p for p in o.chain if p in by_name} for o in objects}
    order: list[str] = []
    while pending:
        ready = [o.name for o in objects if o.name in pending and not pending[o.name]]
        if not ready:
            raise CatalogError(f"the catalog has a dependency cycle among: {', '.join(sorted(pending))}")
        name = ready[0]
        order.append(name)
        del pending[name]
        for deps in pending.values():
            deps.discard(name)
    return order


def _names(value: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (value or "").split(";") if p.strip())


def parse(rows: Iterable[dict[str, str]]) -> list[ObjectDef]:
    objects: list[ObjectDef] = []
    for i, row in enumerate(rows):
        name = row["object"].strip()
        chain, immediate = _names(row["parents"]), _names(row["immediate_parents"])
        if not set(immediate) <= set(chain):
            raise CatalogError(f"{name}: immediate parents {immediate} are not in its chain {chain}")
        objects.append(
            ObjectDef(
                name=name,
                chain=chain,
                immediate=immediate,
                year_scoped=row["year_scoped"].strip() == "yes",
                inferred=row["source"].strip() != "table",
                note=row.get("note", "") or "",
                position=i,
            )
        )
    names = [o.name for o in objects]
    if len(set(names)) != len(names):
        raise CatalogError("the catalog names an object twice")
    for o in objects:
        for p in o.chain:
            if p not in names:
                raise CatalogError(f"{o.name} names an unknown parent {p!r}")
    return objects


@cache
def reference_objects() -> tuple[ObjectDef, ...]:
    text = resources.files("messages").joinpath("object-catalog.csv").read_text(encoding="utf-8")
    return tuple(parse(csv.DictReader(text.splitlines())))


def load(enabled: Iterable[str] | None = None) -> Catalog:
    """The vendor's catalog, restricted to ``enabled`` (default: every non-optional object)."""
    return Catalog(reference_objects(), None if enabled is None else list(enabled))
