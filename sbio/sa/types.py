"""Column types: :class:`UUID`, :class:`JSON`, :class:`UTCDateTime`."""
import datetime
import json
import uuid
from typing import Any

from sqlalchemy import types
from sqlalchemy.engine import Dialect


def _coerce_uuid(value: object) -> uuid.UUID | None:
    if value is None or isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            raise ValueError(f"not a UUID: {value!r}") from None
    if isinstance(value, bytes) and len(value) == 16:
        return uuid.UUID(bytes=value)
    raise ValueError(f"expected a UUID, got {type(value).__name__}")


class UUID(types.TypeDecorator[uuid.UUID]):
    """A UUID column: native ``uuid`` on PostgreSQL, ``CHAR(32)`` hex elsewhere.

    Accepts :class:`uuid.UUID` or its string form and always returns
    :class:`uuid.UUID` (Sideboard returned strings).
    """

    impl = types.Uuid
    cache_ok = True

    def __init__(self) -> None:
        super().__init__(as_uuid=True)

    @property
    def python_type(self) -> type[uuid.UUID]:
        return uuid.UUID

    def process_bind_param(self, value: object, dialect: Dialect) -> uuid.UUID | None:
        return _coerce_uuid(value)

    def process_result_value(self, value: object, dialect: Dialect) -> uuid.UUID | None:
        return _coerce_uuid(value)

    def coerce_compared_value(self, op: object, value: object) -> "UUID":
        return self


class JSON(types.TypeDecorator[Any]):
    """A JSON document column: ``JSONB`` on PostgreSQL, the dialect's JSON type
    where there is one (SQLite, MySQL, ...), JSON text otherwise.

    Python ``None`` is stored as SQL ``NULL`` (pass ``none_as_null=False`` to
    store JSON ``null`` instead). In-place mutation of a loaded dict or list
    is not detected: assign a new value, or wrap the column with
    ``sqlalchemy.ext.mutable.MutableDict.as_mutable(JSON())``.
    """

    impl = types.JSON
    cache_ok = True
    _NATIVE = ("sqlite", "mysql", "mariadb", "mssql", "oracle")

    def __init__(self, none_as_null: bool = True) -> None:
        super().__init__(none_as_null=none_as_null)
        self.none_as_null = none_as_null

    def load_dialect_impl(self, dialect: Dialect) -> types.TypeEngine[Any]:
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import JSONB

            return dialect.type_descriptor(JSONB(none_as_null=self.none_as_null))
        if dialect.name in self._NATIVE:
            return dialect.type_descriptor(types.JSON(none_as_null=self.none_as_null))
        return dialect.type_descriptor(types.Text())

    def _is_text(self, dialect: Dialect) -> bool:
        return dialect.name != "postgresql" and dialect.name not in self._NATIVE

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if self._is_text(dialect) and value is not None:
            return json.dumps(value)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if self._is_text(dialect) and value is not None:
            return json.loads(value)
        return value

    @property
    def python_type(self) -> type[object]:
        return object


def _to_utc(value: object, what: str = "UTCDateTime") -> datetime.datetime | None:
    """Aware datetime (or ISO-8601 string with an offset) -> aware UTC datetime."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            value = datetime.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{what}: not an ISO-8601 datetime: {value!r}") from None
    if not isinstance(value, datetime.datetime):
        raise ValueError(f"{what} expects a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ValueError(
            f"{what} refuses the naive datetime {value.isoformat()}: give it a "
            "timezone, e.g. datetime.now(timezone.utc) or dt.replace(tzinfo=timezone.utc)"
        )
    return value.astimezone(datetime.timezone.utc)


class UTCDateTime(types.TypeDecorator[datetime.datetime]):
    """A point in time, stored in UTC and always returned as an aware UTC datetime.

    Uses the standard library's :data:`datetime.timezone.utc` (no pytz).
    A naive datetime is rejected with :class:`ValueError` (on assignment to a
    model attribute, in ``from_dict``, and when bound in a query) instead of
    being guessed as local time. PostgreSQL stores ``timestamp with time
    zone``; other databases store the naive UTC value and get UTC attached on
    load, so SQLite behaves the same.
    """

    impl = types.DateTime
    cache_ok = True

    @property
    def python_type(self) -> type[datetime.datetime]:
        return datetime.datetime

    def load_dialect_impl(self, dialect: Dialect) -> types.TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(types.DateTime(timezone=True))
        return dialect.type_descriptor(types.DateTime(timezone=False))

    def process_bind_param(self, value: object, dialect: Dialect) -> datetime.datetime | None:
        utc = _to_utc(value)
        if utc is not None and dialect.name != "postgresql":
            utc = utc.replace(tzinfo=None)
        return utc

    def process_result_value(
        self, value: datetime.datetime | None, dialect: Dialect
    ) -> datetime.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=datetime.timezone.utc)
        return value.astimezone(datetime.timezone.utc)
