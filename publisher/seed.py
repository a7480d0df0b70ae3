"""A deterministic, realistically shaped district: sizes follow the number of students.

For N students: schools ≈ N/500, one calendar per school per year (plus an excluded summer-program
calendar), schedule structures and grade levels per calendar, staff ≈ N/12, one enrollment per
student per year, attendance, rosters, course sections, tests with scores, behavior, health,
programs, and the state-specific objects at smaller rates. A few calendars, grade levels and
enrollments are marked ``state_exclude`` so a full resync shows green, yellow and red rows.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, insert

from messages.catalog import Catalog, ref_column
from messages.fields import fields
from publisher.schema import DistrictSchema

CHUNK = 5_000
GRADES = (("K", "01", "02", "03", "04", "05"), ("06", "07", "08"), ("09", "10", "11", "12"))
ENROLLMENT_EXCLUDE_RATE = 0.004

# object -> (population its records hang from, records per member of that population)
RATES: dict[str, tuple[str, float]] = {
    "SchoolMonth": ("calendar", 10),
    "BehaviorType": ("calendar", 8),
    "BehaviorResolutionType": ("calendar", 4),
    "BehaviorResponseType": ("calendar", 4),
    "TermSchedule": ("structure", 4),
    "PeriodSchedule": ("structure", 7),
    "PersonIdentityNoStateIDOnly": ("structure", 3),
    "CourseCode": ("district", 150),
    "ISEPResidentialCertification": ("district", 3),
    "ISEPResidentialVerification": ("district", 3),
    "AttendanceExactCount": ("enrollment", 4),
    "AttendanceBIEAbsentDays": ("enrollment", 0.02),
    "AttendanceGroupKY": ("enrollment", 0.05),
    "AttendanceKYMinute": ("enrollment", 0.05),
    "AttendanceSDMinute": ("enrollment", 0.05),
    "CustomStudent": ("enrollment", 0.5),
    "ESSKY": ("enrollment", 0.03),
    "FRYSCStatusKY": ("enrollment", 0.03),
    "PreSchoolKY": ("enrollment", 0.01),
    "Title1KY": ("enrollment", 0.1),
    "Graduation": ("enrollment", 0.06),
    "Evaluation": ("enrollment", 0.05),
    "Roster": ("enrollment", 5),
    "Behavior": ("student", 0.3),
    "CensusContactSummary": ("student", 1),
    "ContactLog": ("student", 0.5),
    "CTEDataME": ("student", 0.02),
    "Form": ("student", 0.2),
    "FRYSCGroupProgramKY": ("student", 0.02),
    "GiftedStatusKY": ("student", 0.05),
    "HealthScreening": ("student", 0.5),
    "ImmCertificate": ("student", 1),
    "LEPKY": ("student", 0.05),
    "MedicaidInsurance": ("student", 0.2),
    "NASIS": ("student", 0.02),
    "Plan": ("student", 0.12),
    "POSEligibility": ("student", 0.3),
    "ProcessMessage": ("student", 0.1),
    "ProgramParticipation": ("student", 0.4),
    "TeamMember": ("student", 0.1),
    "TEDSKY": ("student", 0.02),
    "Test": ("student", 1.5),
    "Transportation": ("student", 0.5),
    "Truancy": ("student", 0.03),
    "VaccineShot": ("student", 3),
    "Employment": ("staff", 1),
    "EmploymentAssignment": ("staff", 1.5),
    "EmploymentBackground": ("staff", 1),
    "EmploymentCredential": ("staff", 1),
    "PlanProgressReport": ("Plan", 2),
    "TestScore": ("Test", 2),
    "FRYSCGroupStatusKY": ("FRYSCGroupProgramKY", 1),
}


@dataclass
class Member:
    """A record others hang from, with the context its children need."""

    ref: str
    refs: dict[str, str]
    year: int | None = None
    grade: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Generator:
    def __init__(self, engine: Engine, catalog: Catalog, students: int, seed: int, years: list[int]) -> None:
        self.engine, self.catalog, self.students, self.years = engine, catalog, students, sorted(years)
        self.rng = random.Random(seed)
        self.schema = DistrictSchema(catalog)
        self.pops: dict[str, list[Member]] = {}
        self.current = max(self.years)

    def ref(self) -> str:
        return f"{self.rng.getrandbits(128):032X}"

    def write(self, name: str, rows: Iterator[dict[str, Any]]) -> None:
        """Insert rows in chunks (rows of objects that are not enabled are generated and dropped,
        so the data does not depend on which objects a deployment enables)."""
        if name not in self.catalog:
            for _ in rows:
                pass
            return
        table = self.schema.tables[name]
        with self.engine.begin() as conn:
            chunk: list[dict[str, Any]] = []
            for row in rows:
                chunk.append(row)
                if len(chunk) >= CHUNK:
                    conn.execute(insert(table), chunk)
                    chunk = []
            if chunk:
                conn.execute(insert(table), chunk)

    def fill(self, name: str, year: int | None, /, **given: Any) -> dict[str, Any]:
        rng = self.rng
        base = dt.date(year or self.current, 1, 1) - dt.timedelta(days=140)
        row: dict[str, Any] = {}
        for col, kind in fields(name):
            if col in given:
                continue
            if kind == "str":
                row[col] = f"{col[:4].upper()}-{rng.randrange(10_000):04d}"
            elif kind == "int":
                row[col] = rng.randrange(1, 100)
            elif kind == "bool":
                row[col] = rng.random() < 0.5
            elif kind == "decimal":
                row[col] = round(rng.uniform(0, 100), 2)
            else:
                row[col] = base + dt.timedelta(days=rng.randrange(300))
        if "state_exclude" in row:
            row["state_exclude"] = False
        row.update(given)
        return row

    def record(self, name: str, parent_refs: dict[str, str], year: int | None, /, **given: Any) -> dict[str, Any]:
        obj = self.catalog.objects.get(name)
        row = self.fill(name, year, **given)
        row["ref_id"] = self.ref()
        if obj is not None:
            for p in obj.references:
                row[ref_column(p)] = parent_refs[p]
            if obj.year_scoped:
                row["school_year"] = year
        return row


_KEEP = {
    "District",
    "School",
    "Calendar",
    "ScheduleStructure",
    "StructureGradeLevel",
    "PersonIdentity",
    "Enrollment",
    "Plan",
    "Test",
    "FRYSCGroupProgramKY",
}


def seed(engine: Engine, catalog: Catalog, *, students: int, seed: int = 1, years: list[int],
         current: int | None = None) -> dict[str, int]:
    """Create the district tables and fill them for each school year in ``years``. People point at the
    schedule structures of the ``current`` year (default: the latest seeded). Returns rows per object."""
    g = Generator(engine, catalog, students, seed, years)
    if current in g.years:
        g.current = current
    g.schema.create(engine)
    counts: dict[str, int] = {}

    def put(name: str, rows: Iterator[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        n = 0

        def counted() -> Iterator[dict[str, Any]]:
            nonlocal n
            for row in rows:
                n += 1
                if name in _KEEP:
                    out.append(row)
                yield row

        g.write(name, counted())
        if name in catalog:
            counts[name] = counts.get(name, 0) + n
        return out

    rng = g.rng
    district = put(
        "District",
        iter([g.record("District", {}, None, name="Example Unified School District", state_district_number="0420")]),
    )[0]
    dref = {"District": district["ref_id"]}
    put("ReportingEntity", iter([g.record("ReportingEntity", dref, None, name="Example Reporting Entity")]))
    n_schools = max(2, round(students / 500))
    schools = put(
        "School",
        (
            g.record("School", dref, None, name=f"School {i + 1}", school_type=("elementary", "middle", "high")[i % 3])
            for i in range(n_schools)
        ),
    )

    calendars: list[Member] = []
    structures: list[Member] = []
    main_structure: dict[tuple[int, int], Member] = {}
    grade_levels: dict[tuple[int, int, str], str] = {}
    for year in g.years:
        cal_rows = []
        for i, school in enumerate(schools):
            cal_rows.append(
                (
                    i,
                    g.record(
                        "Calendar",
                        {"School": school["ref_id"]},
                        year,
                        name=f"{year - 1}-{year % 100:02d} Regular",
                        start_date=dt.date(year - 1, 8, 20),
                        end_date=dt.date(year, 6, 1),
                        summer_school=False,
                    ),
                )
            )
        cal_rows.append(
            (
                0,
                g.record(
                    "Calendar",
                    {"School": schools[0]["ref_id"]},
                    year,
                    name=f"{year} Summer Program",
                    start_date=dt.date(year, 6, 10),
                    end_date=dt.date(year, 7, 20),
                    summer_school=True,
                    state_exclude=True,
                ),
            )
        )
        put("Calendar", iter(r for _, r in cal_rows))
        ss_rows, sgl_rows = [], []
        for i, cal in cal_rows:
            cm = Member(cal["ref_id"], {"Calendar": cal["ref_id"]}, year, extra={"school": i})
            calendars.append(cm)
            summer = bool(cal["summer_school"])
            for k in range(1 if summer or i % 3 else 2):
                ss = g.record(
                    "ScheduleStructure",
                    {"Calendar": cal["ref_id"]},
                    year,
                    name=("Main", "Alternate")[k],
                    is_primary=k == 0,
                )
                ss_rows.append(ss)
                sm = Member(
                    ss["ref_id"],
                    {"Calendar": cal["ref_id"], "ScheduleStructure": ss["ref_id"]},
                    year,
                    extra={"school": i, "summer": summer},
                )
                structures.append(sm)
                if k == 0 and not summer:
                    main_structure[(i, year)] = sm
                grades = GRADES[i % 3] if not summer else ("05", "06")
                if i == 0 and k == 0 and not summer:
                    grades = ("PK", *grades)
                for grade in grades:
                    sgl = g.record(
                        "StructureGradeLevel",
                        sm.refs,
                        year,
                        grade=grade,
                        state_grade=grade,
                        state_exclude=grade == "PK",
                    )
                    sgl_rows.append(sgl)
                    if k == 0 and not summer:
                        grade_levels[(i, year, grade)] = sgl["ref_id"]
        put("ScheduleStructure", iter(ss_rows))
        put("StructureGradeLevel", iter(sgl_rows))

    def days() -> Iterator[dict[str, Any]]:
        for sm in structures:
            start = (
                dt.date(sm.year or g.current, 6, 10)
                if sm.extra["summer"]
                else dt.date((sm.year or g.current) - 1, 8, 20)
            )
            day, made = start, 0
            while made < (30 if sm.extra["summer"] else 180):
                if day.weekday() < 5:
                    yield g.record("Day", sm.refs, sm.year, date=day, instructional=True, minutes=390)
                    made += 1
                day += dt.timedelta(days=1)

    put("Day", days())

    # people: students and staff belong to a school; they point at its current main structure
    persons: list[Member] = []

    def people() -> Iterator[dict[str, Any]]:
        for n in range(students + max(1, students // 12)):
            school = n % n_schools
            structure = main_structure[(school, g.current)]
            row = g.record(
                "PersonIdentity",
                {"ScheduleStructure": structure.ref},
                None,
                state_id=f"{1_000_000_000 + n}",
                first_name=rng.choice(_FIRST),
                last_name=rng.choice(_LAST),
                gender=rng.choice("FM"),
            )
            persons.append(
                Member(
                    row["ref_id"], {"PersonIdentity": row["ref_id"]}, extra={"school": school, "student": n < students}
                )
            )
            yield row

    put("PersonIdentity", people())
    student_members = [p for p in persons if p.extra["student"]]
    staff_members = [p for p in persons if not p.extra["student"]]

    sections: dict[tuple[int, int], list[str]] = {}

    def course_sections() -> Iterator[dict[str, Any]]:
        for cm in calendars:
            n = max(4, students // n_schools // 20)
            for k in range(n):
                row = g.record("CourseSection", cm.refs, cm.year, course_number=f"C{k % 150:03d}", section_number=k)
                sections.setdefault((cm.extra["school"], cm.year or 0), []).append(row["course_number"])
                yield row

    put("CourseSection", course_sections())

    enrollments: list[Member] = []

    def enrollment_rows() -> Iterator[dict[str, Any]]:
        for year in g.years:
            for p in student_members:
                school = p.extra["school"]
                grades = GRADES[school % 3]
                grade = "PK" if school == 0 and rng.random() < 0.01 else rng.choice(grades)
                cal = main_structure[(school, year)].refs["Calendar"]
                excluded = rng.random() < ENROLLMENT_EXCLUDE_RATE
                row = g.record(
                    "Enrollment",
                    {"PersonIdentity": p.ref, "Calendar": cal},
                    year,
                    grade=grade,
                    service_type="P",
                    state_exclude=excluded,
                )
                enrollments.append(
                    Member(
                        row["ref_id"],
                        {
                            "Enrollment": row["ref_id"],
                            "Calendar": cal,
                            "StructureGradeLevel": grade_levels[(school, year, grade)],
                            "PersonIdentity": p.ref,
                        },
                        year,
                        grade,
                    )
                )
                yield row

    put("Enrollment", enrollment_rows())

    # the rest hang from a population at a rate
    student_year = [
        Member(p.ref, {"PersonIdentity": p.ref, "Calendar": main_structure[(p.extra["school"], y)].refs["Calendar"]}, y)
        for y in g.years
        for p in student_members
    ]
    staff_year = [
        Member(p.ref, {"PersonIdentity": p.ref, "Calendar": main_structure[(p.extra["school"], y)].refs["Calendar"]}, y)
        for y in g.years
        for p in staff_members
    ]
    g.pops = {
        "district": [Member(district["ref_id"], dref)],
        "calendar": [c for c in calendars],
        "structure": [s for s in structures if not s.extra["summer"]],
        "enrollment": enrollments,
        "student": student_year,
        "staff": staff_year,
    }
    for name in catalog.names():
        if name in counts or name not in RATES:
            continue
        population, rate = RATES[name]
        obj = catalog.get(name)
        members = g.pops.get(population, [])
        if not obj.year_scoped and population in ("student", "staff"):
            members = [m for m in members if m.year == g.current]

        def rows(members: list[Member] = members, rate: float = rate, name: str = name) -> Iterator[dict[str, Any]]:
            for m in members:
                whole, frac = int(rate), rate - int(rate)
                for _ in range(whole + (1 if rng.random() < frac else 0)):
                    refs = dict(m.refs)
                    refs.setdefault("Calendar", "")
                    yield g.record(name, refs, m.year, **_specific(name, m, rng))

        kept = put(name, rows())
        if name in ("Plan", "Test", "FRYSCGroupProgramKY"):
            g.pops[name] = [
                Member(
                    r["ref_id"],
                    {
                        name: r["ref_id"],
                        "PersonIdentity": r["person_identity_ref_id"],
                        "Calendar": r.get("calendar_ref_id", ""),
                    },
                    r.get("school_year"),
                )
                for r in kept
            ]
    return {n: counts.get(n, 0) for n in catalog.names()}


def _specific(name: str, m: Member, rng: random.Random) -> dict[str, Any]:
    if name == "Roster":
        return {"section_number": rng.randrange(40)}
    if name == "Test":
        return {"test_name": rng.choice(("State Math", "State Reading", "State Science")), "grade": m.grade or None}
    if name == "TestScore":
        return {"score_type": rng.choice(("scale", "raw")), "scale_score": rng.randrange(200, 800)}
    return {}


_FIRST = ("Ava", "Liam", "Mia", "Noah", "Zoe", "Eli", "Ivy", "Owen", "Ruby", "Leo", "Nora", "Ezra", "Maya", "Finn")
_LAST = ("Black", "Ward", "Nguyen", "Garcia", "Smith", "Patel", "Johnson", "Lee", "Brown", "Lopez", "Kim", "Young")
