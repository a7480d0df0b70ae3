"""The typed columns each object carries besides its keys: the shape of an event's ``data``.

Types are contract names (``str``, ``int``, ``bool``, ``date``, ``decimal``); both databases map
them to their own column types. An object not listed here carries the default fields.
"""

from __future__ import annotations

from typing import Literal

FieldType = Literal["str", "int", "bool", "date", "decimal"]
Fields = tuple[tuple[str, FieldType], ...]

DEFAULT: Fields = (("code", "str"), ("description", "str"), ("start_date", "date"), ("end_date", "date"))

_PERSON: Fields = (
    ("state_id", "str"),
    ("first_name", "str"),
    ("last_name", "str"),
    ("birth_date", "date"),
    ("gender", "str"),
    ("race_ethnicity", "str"),
)
_ATTENDANCE: Fields = (("period_start", "date"), ("period_end", "date"), ("present_days", "decimal"),
                       ("absent_days", "decimal"), ("minutes", "int"))
_TYPE: Fields = (("code", "str"), ("name", "str"), ("state_code", "str"))
_EMPLOYMENT: Fields = (("code", "str"), ("title", "str"), ("start_date", "date"), ("end_date", "date"),
                       ("fte", "decimal"))

FIELDS: dict[str, Fields] = {
    "District": (("name", "str"), ("state_district_number", "str"), ("address", "str"), ("phone", "str")),
    "ReportingEntity": (("name", "str"), ("entity_number", "str")),
    "School": (("name", "str"), ("state_school_number", "str"), ("school_type", "str"), ("address", "str")),
    "Calendar": (("name", "str"), ("start_date", "date"), ("end_date", "date"),
                 ("summer_school", "bool"), ("state_exclude", "bool")),
    "ScheduleStructure": (("name", "str"), ("is_primary", "bool"), ("start_date", "date")),
    "StructureGradeLevel": (("grade", "str"), ("state_grade", "str"), ("state_exclude", "bool")),
    "PersonIdentity": _PERSON,
    "PersonIdentityNoStateIDOnly": _PERSON,
    "CourseSection": (("course_number", "str"), ("section_number", "int"), ("name", "str"),
                      ("teacher_name", "str"), ("capacity", "int")),
    "CourseCode": (("code", "str"), ("name", "str"), ("subject_area", "str"), ("credits", "decimal")),
    "Day": (("date", "date"), ("instructional", "bool"), ("minutes", "int")),
    "Enrollment": (("grade", "str"), ("start_date", "date"), ("end_date", "date"),
                   ("service_type", "str"), ("start_status", "str"), ("state_exclude", "bool")),
    "AttendanceExactCount": _ATTENDANCE,
    "AttendanceBIEAbsentDays": _ATTENDANCE,
    "AttendanceGroupKY": _ATTENDANCE,
    "AttendanceKYMinute": _ATTENDANCE,
    "AttendanceSDMinute": _ATTENDANCE,
    "Behavior": (("incident_date", "date"), ("event_code", "str"), ("role", "str"), ("resolution", "str")),
    "BehaviorType": _TYPE,
    "BehaviorResolutionType": _TYPE,
    "BehaviorResponseType": _TYPE,
    "Employment": _EMPLOYMENT,
    "EmploymentAssignment": _EMPLOYMENT,
    "EmploymentBackground": (("degree", "str"), ("institution", "str"), ("years_experience", "int")),
    "EmploymentCredential": (("credential_type", "str"), ("number", "str"), ("issued", "date"),
                             ("expires", "date")),
    "Graduation": (("diploma_type", "str"), ("diploma_date", "date"), ("cohort_year", "int")),
    "HealthScreening": (("screening", "str"), ("screen_date", "date"), ("result", "str")),
    "ImmCertificate": (("certificate_type", "str"), ("issued", "date"), ("complete", "bool")),
    "VaccineShot": (("vaccine", "str"), ("shot_date", "date"), ("dose", "int")),
    "Test": (("test_name", "str"), ("test_date", "date"), ("subject", "str"), ("grade", "str")),
    "TestScore": (("score_type", "str"), ("scale_score", "int"), ("performance_level", "str")),
    "Roster": (("course_number", "str"), ("section_number", "int"), ("start_date", "date"),
               ("end_date", "date")),
    "ProgramParticipation": (("program", "str"), ("start_date", "date"), ("end_date", "date"),
                             ("eligibility", "str")),
    "Transportation": (("bus_number", "str"), ("miles", "decimal"), ("eligible", "bool")),
    "Plan": (("plan_type", "str"), ("start_date", "date"), ("end_date", "date")),
    "PlanProgressReport": (("report_date", "date"), ("progress", "str")),
    "SchoolMonth": (("month_number", "int"), ("start_date", "date"), ("end_date", "date")),
    "TermSchedule": (("name", "str"), ("terms", "int")),
    "PeriodSchedule": (("name", "str"), ("periods", "int")),
}


def fields(name: str) -> Fields:
    return FIELDS.get(name, DEFAULT)
