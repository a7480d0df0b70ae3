"""The object catalog: loading the vendor CSV, lookups, ordering and Check Dependencies planning."""

from __future__ import annotations

import csv
from importlib import resources

import pytest
from hypothesis import given
from hypothesis import strategies as st

from messages import catalog as catalog_mod
from messages.catalog import Catalog, parse, snake
from messages.errors import CatalogError, UnknownObjectError

CATALOG = catalog_mod.load()
NAMES = CATALOG.names()


def _csv_rows() -> list[dict[str, str]]:
    text = resources.files("messages").joinpath("object-catalog.csv").read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines()))


def _ancestors(name: str) -> set[str]:
    """Every ancestor by following chains transitively (independent of closure())."""
    out: set[str] = set()
    todo = list(CATALOG.get(name).chain)
    while todo:
        p = todo.pop()
        if p not in out:
            out.add(p)
            todo.extend(CATALOG.get(p).chain)
    return out


def _row(name: str, parents: str = "", immediate: str = "", year_scoped: str = "no") -> dict[str, str]:
    return {"object": name, "parents": parents, "immediate_parents": immediate,
            "year_scoped": year_scoped, "source": "table", "note": ""}


# loading ------------------------------------------------------------------------------------


def test_load_has_every_csv_object_except_the_optional_one() -> None:
    csv_names = [r["object"] for r in _csv_rows()]
    assert len(NAMES) == 61
    assert set(NAMES) == set(csv_names) - {"ReportingEntity"}
    assert "ReportingEntity" not in CATALOG


@pytest.mark.parametrize("name, inferred", [
    ("Enrollment", False),
    ("District", False),
    ("SchoolMonth", True),
    ("BehaviorType", True),
    ("Evaluation", True),  # source "child-list"
])
def test_inferred_is_set_for_rows_not_from_the_table(name: str, inferred: bool) -> None:
    assert CATALOG.get(name).inferred is inferred


def test_inferred_matches_the_source_column_for_every_row() -> None:
    for row in _csv_rows():
        if row["object"] in CATALOG:
            assert CATALOG.get(row["object"]).inferred is (row["source"] != "table"), row["object"]


@pytest.mark.parametrize("name, year_scoped", [
    ("District", False), ("School", False), ("Calendar", True), ("Enrollment", True),
    ("PersonIdentity", False), ("Graduation", False), ("Roster", True),
])
def test_year_scoped(name: str, year_scoped: bool) -> None:
    assert CATALOG.get(name).year_scoped is year_scoped


@pytest.mark.parametrize("name, immediate", [
    ("District", ()),
    ("CourseCode", ()),
    ("School", ("District",)),
    ("Day", ("ScheduleStructure",)),  # its chain lists PersonIdentity, its immediate parent does not
    ("Enrollment", ("PersonIdentity",)),
    ("FRYSCGroupStatusKY", ("PersonIdentity", "FRYSCGroupProgramKY")),
])
def test_immediate_parents(name: str, immediate: tuple[str, ...]) -> None:
    assert CATALOG.get(name).immediate == immediate


@pytest.mark.parametrize("name, refs", [
    ("Roster", ("Enrollment", "Calendar", "StructureGradeLevel")),
    ("Enrollment", ("PersonIdentity", "Calendar")),
    ("Calendar", ("School",)),
    ("PersonIdentity", ("ScheduleStructure",)),  # not year-scoped: immediate parents only
    ("District", ()),
])
def test_references(name: str, refs: tuple[str, ...]) -> None:
    assert CATALOG.get(name).references == refs


@pytest.mark.parametrize("name, table", [
    ("PersonIdentityNoStateIDOnly", "person_identity_no_state_id_only"),
    ("District", "district"),
    ("AttendanceBIEAbsentDays", "attendance_bie_absent_days"),
    ("CTEDataME", "cte_data_me"),
    ("Title1KY", "title1_ky"),
])
def test_snake(name: str, table: str) -> None:
    assert snake(name) == table


def test_table_property_is_the_snake_name() -> None:
    assert CATALOG.get("PersonIdentityNoStateIDOnly").table == "person_identity_no_state_id_only"


# lookups ------------------------------------------------------------------------------------


def test_lookup_is_case_insensitive() -> None:
    assert CATALOG.get("enrollment").name == "Enrollment"
    assert CATALOG.get("PERSONIDENTITY").name == "PersonIdentity"


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(UnknownObjectError, match="Enrollment") as info:
        CATALOG.get("Enrolment")
    assert "Enrollment" in info.value.suggestions
    assert isinstance(info.value, CatalogError)


def test_unknown_name_in_plan_raises() -> None:
    with pytest.raises(UnknownObjectError):
        CATALOG.plan(["NoSuchThing"])


def test_enabled_names_restrict_the_catalog() -> None:
    assert catalog_mod.load(["School", "District"]).names() == ["District", "School"]


def test_enabled_names_in_another_case_are_kept() -> None:
    assert catalog_mod.load(["district", "school"]).names() == ["District", "School"]


def test_enabling_an_object_without_its_parents_raises() -> None:
    with pytest.raises(CatalogError, match="School"):
        catalog_mod.load(["District", "Calendar"])


def test_enabling_an_unknown_object_raises() -> None:
    with pytest.raises(UnknownObjectError):
        catalog_mod.load(["District", "Nope"])


def test_a_disabled_object_is_reported_as_not_enabled() -> None:
    with pytest.raises(CatalogError, match="not enabled"):
        CATALOG.get("ReportingEntity")


def test_reporting_entity_can_be_enabled_explicitly() -> None:
    cat = catalog_mod.load([*NAMES, "ReportingEntity"])
    assert "ReportingEntity" in cat
    assert len(cat.names()) == 62
    assert cat.get("ReportingEntity").immediate == ("District",)
    assert cat.names().index("District") < cat.names().index("ReportingEntity")


def test_reporting_entity_sits_between_district_and_the_objects_under_it() -> None:
    cat = catalog_mod.load([*NAMES, "ReportingEntity"])
    tree = dict(cat.tree())
    assert tree["District"] == 0 and tree["ReportingEntity"] == 1 and tree["School"] == 2 and tree["Calendar"] == 3
    assert cat.children("District") == ["ReportingEntity"]
    assert "School" in cat.children("ReportingEntity") and "CourseCode" not in cat.children("ReportingEntity")
    assert cat.plan(["School"], check_dependencies=True) == ["District", "ReportingEntity", "School"]
    for name in cat.names():  # every object below District comes after it
        if "District" in cat.get(name).chain and name != "ReportingEntity":
            assert cat.names().index("ReportingEntity") < cat.names().index(name), name
    assert cat.get("School").references == ("District",)  # a School's record still points at its District
    assert dict(CATALOG.tree())["School"] == 1  # without it, nothing moves


def test_cycle_is_rejected() -> None:
    objects = parse([_row("A", "B", "B"), _row("B", "A", "A")])
    with pytest.raises(CatalogError, match="cycle"):
        Catalog(objects)


def test_parse_rejects_an_immediate_parent_outside_the_chain() -> None:
    with pytest.raises(CatalogError):
        parse([_row("A"), _row("B"), _row("C", "A", "B")])


def test_parse_rejects_an_unknown_parent() -> None:
    with pytest.raises(CatalogError, match="unknown parent"):
        parse([_row("A", "Ghost", "Ghost")])


def test_parse_rejects_a_duplicate_name() -> None:
    with pytest.raises(CatalogError, match="twice"):
        parse([_row("A"), _row("A")])


# planning -----------------------------------------------------------------------------------


def test_plan_enrollment_with_dependencies() -> None:
    assert CATALOG.plan(["Enrollment"], check_dependencies=True) == [
        "District", "School", "Calendar", "ScheduleStructure", "PersonIdentity", "Enrollment"]


def test_plan_enrollment_without_dependencies() -> None:
    assert CATALOG.plan(["Enrollment"]) == ["Enrollment"]


def test_plan_accepts_any_case_and_duplicates() -> None:
    assert CATALOG.plan(["enrollment", "Enrollment", "district"]) == ["District", "Enrollment"]


subsets = st.sets(st.sampled_from(NAMES))


@given(subsets, st.booleans())
def test_plan_puts_ancestors_before_descendants(picked: set[str], check: bool) -> None:
    plan = CATALOG.plan(picked, check_dependencies=check)
    pos = {n: i for i, n in enumerate(plan)}
    for name in plan:
        for anc in _ancestors(name):
            if anc in pos:
                assert pos[anc] < pos[name], (anc, name)


@given(subsets)
def test_check_dependencies_includes_every_ancestor(picked: set[str]) -> None:
    plan = set(CATALOG.plan(picked, check_dependencies=True))
    assert picked <= plan
    for name in picked:
        assert _ancestors(name) <= plan


@given(subsets)
def test_closure_is_idempotent(picked: set[str]) -> None:
    once = CATALOG.closure(picked)
    assert CATALOG.closure(once) == once


@given(subsets, st.booleans())
def test_plan_is_a_subsequence_of_the_full_order(picked: set[str], check: bool) -> None:
    plan = CATALOG.plan(picked, check_dependencies=check)
    assert plan == [n for n in NAMES if n in set(plan)]
    if not check:
        assert set(plan) == picked
