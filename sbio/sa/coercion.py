"""Values in and out of their JSON forms, per column type.

``_coerce_value`` checks (and converts) a value ``from_dict`` is given for a column,
by the rule :data:`_COERCIONS` holds for the column's type; ``_jsonable`` gives the
JSON form ``to_dict(jsonable=True)`` returns.
"""
import datetime
import decimal
import enum
import json
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import types

from .types import JSON, UUID, UTCDateTime, _coerce_uuid, _to_utc


class _Invalid(Exception):
    pass


#: ``rule(column_type, value) -> value to assign`` (or raises :class:`_Invalid`)
_Rule = Callable[[Any, Any], Any]


def _coerce_value(column: Any, value: object) -> Any:
    """Validate *value* for *column* (a :class:`~sqlalchemy.schema.Column`, which
    SQLAlchemy's mapper types as a ``ColumnElement``); return the value to assign
    or raise _Invalid.

    ``None`` is checked against the column's nullability; any other value goes
    to the rule :func:`_rule_for` finds for the column's type.
    """
    if value is None:
        if not column.nullable:
            raise _Invalid("may not be null")
        return None
    found = _rule_for(column.type)
    if found is None:
        return _coerce_python_type(column.type, value)
    rule, type_ = found
    return rule(type_, value)


def _rule_for(type_: types.TypeEngine[Any]) -> tuple[_Rule, types.TypeEngine[Any]] | None:
    """``(rule, type)``: the first entry of :data:`_COERCIONS` along the MRO of
    *type_*'s class, else (for a ``TypeDecorator``) along its implementation
    type's; ``None`` when neither has one."""
    for klass in type(type_).__mro__:
        rule = _COERCIONS.get(klass)
        if rule is not None:
            return rule, type_
    if isinstance(type_, types.TypeDecorator):
        return _rule_for(type_.impl_instance)
    return None


def _coerce_uuid_value(type_: types.TypeEngine[Any], value: object) -> uuid.UUID | None:
    """A :class:`uuid.UUID`, its string form or its 16 bytes -> :class:`uuid.UUID`."""
    try:
        return _coerce_uuid(value)
    except ValueError as e:
        raise _Invalid(str(e)) from None


def _coerce_utc_datetime(
    type_: types.TypeEngine[Any], value: object
) -> datetime.datetime | None:
    """An aware datetime or an ISO-8601 string with an offset -> aware UTC datetime;
    a naive one is refused (see :func:`_to_utc`)."""
    try:
        return _to_utc(value, "datetime")
    except ValueError as e:
        raise _Invalid(str(e)) from None


def _check_json(type_: types.TypeEngine[Any], value: object) -> object:
    """Anything ``json.dumps`` accepts, unchanged."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        raise _Invalid("not JSON-serializable") from None
    return value


def _coerce_enum(type_: types.Enum, value: object) -> object:
    """With an enum class: a member, a member's name or a member's value -> the member.
    Without one: one of the type's strings, unchanged."""
    enum_class = type_.enum_class
    if enum_class is None:
        if value not in type_.enums:
            raise _Invalid(f"expected one of {list(type_.enums)}")
        return value
    if isinstance(value, enum_class):
        return value
    if isinstance(value, str) and value in enum_class.__members__:
        return enum_class[value]
    try:
        return enum_class(value)
    except ValueError:
        raise _Invalid(f"expected one of {sorted(enum_class.__members__)}") from None


def _check_bool(type_: types.TypeEngine[Any], value: object) -> bool:
    """``True`` or ``False`` only (not 0 / 1)."""
    if not isinstance(value, bool):
        raise _Invalid(f"expected a boolean, got {type(value).__name__}")
    return value


def _check_int(type_: types.TypeEngine[Any], value: object) -> int:
    """An ``int`` that is not a ``bool``, unchanged."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f"expected an integer, got {type(value).__name__}")
    return value


def _coerce_number(
    type_: types.TypeEngine[Any], value: object
) -> int | float | decimal.Decimal:
    """An int, float or Decimal unchanged (not a bool); a numeric string -> Decimal."""
    if isinstance(value, bool):
        raise _Invalid("expected a number, got bool")
    if isinstance(value, (int, float, decimal.Decimal)):
        return value
    if isinstance(value, str):
        try:
            return decimal.Decimal(value)
        except decimal.InvalidOperation:
            pass
    raise _Invalid(f"expected a number, got {type(value).__name__}")


def _check_string(type_: types.String, value: object) -> str:
    """A ``str`` no longer than the type's length (when it has one), unchanged."""
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, got {type(value).__name__}")
    if type_.length is not None and len(value) > type_.length:
        raise _Invalid(f"longer than {type_.length} characters")
    return value


def _coerce_datetime(type_: types.TypeEngine[Any], value: object) -> datetime.datetime:
    """A datetime unchanged; an ISO-8601 string (``Z`` allowed) -> datetime."""
    if isinstance(value, datetime.datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
    raise _Invalid("expected a datetime")


def _coerce_date(type_: types.TypeEngine[Any], value: object) -> datetime.date:
    """A date (not a datetime) unchanged; an ISO-8601 date string -> date."""
    if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.date.fromisoformat(value)
        except ValueError:
            pass
    raise _Invalid("expected a date")


def _coerce_time(type_: types.TypeEngine[Any], value: object) -> datetime.time:
    """A time unchanged; an ISO-8601 time string -> time."""
    if isinstance(value, datetime.time):
        return value
    if isinstance(value, str):
        try:
            return datetime.time.fromisoformat(value)
        except ValueError:
            pass
    raise _Invalid("expected a time")


def _coerce_interval(type_: types.TypeEngine[Any], value: object) -> datetime.timedelta:
    """A timedelta unchanged; a number of seconds (not a bool) -> timedelta."""
    if isinstance(value, datetime.timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.timedelta(seconds=value)
    raise _Invalid("expected a duration (timedelta or seconds)")


def _coerce_bytes(type_: types.TypeEngine[Any], value: object) -> bytes:
    """bytes, bytearray or memoryview -> bytes."""
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise _Invalid(f"expected bytes, got {type(value).__name__}")
    return bytes(value)


def _coerce_python_type(type_: types.TypeEngine[Any], value: object) -> object:
    """Types without a rule: an instance of the type's ``python_type``, unchanged
    (anything when it has none or it is ``object``)."""
    try:
        python_type = type_.python_type
    except NotImplementedError:
        return value
    if python_type is not object and not isinstance(value, python_type):
        raise _Invalid(f"expected {python_type.__name__}, got {type(value).__name__}")
    return value


#: Column type class -> the rule ``rule(type, value)`` that validates a
#: ``from_dict`` value for it (returns the value to assign or raises
#: :class:`_Invalid`). Looked up along the MRO of the column's type, then of
#: its implementation type for a ``TypeDecorator``; :func:`_coerce_python_type`
#: for a type found in neither.
_COERCIONS: dict[type, _Rule] = {
    UUID: _coerce_uuid_value,
    types.Uuid: _coerce_uuid_value,
    UTCDateTime: _coerce_utc_datetime,
    JSON: _check_json,
    types.JSON: _check_json,
    types.Enum: _coerce_enum,
    types.Boolean: _check_bool,
    types.Integer: _check_int,
    types.Numeric: _coerce_number,
    types.Float: _coerce_number,
    types.String: _check_string,
    types.DateTime: _coerce_datetime,
    types.Date: _coerce_date,
    types.Time: _coerce_time,
    types.Interval: _coerce_interval,
    types.LargeBinary: _coerce_bytes,
}


def _jsonable(value: object) -> object:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, enum.Enum):
        return value.name
    return value
