"""SQLAlchemy 2.x helpers: declarative models, sessions, column types, change notifications.

A typical models module::

    import uuid
    from sqlalchemy import Column, Text
    from sbio.sa import declarative_base, SessionManager, UUID, create_engine

    @declarative_base
    class Base:
        id = Column(UUID(), primary_key=True, default=uuid.uuid4)

    class Website(Base):                # table "website"
        url = Column(Text(), nullable=False, unique=True)

    class Session(SessionManager):
        engine = create_engine("sqlite:///ragnarok.db")

    Session.initialize_db()             # explicit; never done at import time

    with Session() as s:                # commit on success, rollback on error, always close
        s.add(Website(url="https://example.org"))
    # after the commit the channel "website" is notified (sbio.live.notify)

See ``docs/database.md`` for the user guide.
"""
import copy
import datetime
import decimal
import enum
import inspect as _pyinspect
import json
import logging
import sys
import threading
import uuid
import weakref

import sqlalchemy
from sqlalchemy import event, types
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import make_url
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import (
    MANYTOONE,
    DeclarativeBase,
    MappedColumn,
    declared_attr,
    object_session,
    sessionmaker,
)
from sqlalchemy.orm import Session as _SASession
from sqlalchemy.pool import StaticPool
from sqlalchemy.schema import Column, UniqueConstraint

from sbio.channels import model_channel, snake_case  # noqa: F401  (public here too)
from sbio.errors import RpcError

__all__ = [
    "declarative_base",
    "CrudMixin",
    "SessionManager",
    "SbioSession",
    "UUID",
    "JSON",
    "UTCDateTime",
    "ValidationError",
    "create_engine",
    "model_channel",
    "snake_case",
]

log = logging.getLogger("sbio.sa")  # one logger for the whole package, as documented


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------

# snake_case and model_channel: the channel naming rule lives in sbio.channels.


class ValidationError(RpcError, ValueError):
    """``from_dict`` (or a column type) rejected a value.

    A subclass of :class:`sbio.RpcError` with code ``"bad_request"``: raised
    in a handler it reaches the client as
    ``{"ok": false, "error": {"code": "bad_request", "message": ...}}``.
    ``errors`` maps each offending attribute path (``"websites[0].url"``) to
    its problem; the message lists all of them.
    """

    def __init__(self, errors):
        if isinstance(errors, str):
            errors = {"": errors}
        self.errors = dict(errors)
        message = "; ".join(f"{k}: {v}" if k else v for k, v in self.errors.items())
        super().__init__("bad_request", message)


# --------------------------------------------------------------------------
# column types
# --------------------------------------------------------------------------


def _coerce_uuid(value):
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


class UUID(types.TypeDecorator):
    """A UUID column: native ``uuid`` on PostgreSQL, ``CHAR(32)`` hex elsewhere.

    Accepts :class:`uuid.UUID` or its string form and always returns
    :class:`uuid.UUID` (Sideboard returned strings).
    """

    impl = types.Uuid
    cache_ok = True

    def __init__(self):
        super().__init__(as_uuid=True)

    @property
    def python_type(self):
        return uuid.UUID

    def process_bind_param(self, value, dialect):
        return _coerce_uuid(value)

    def process_result_value(self, value, dialect):
        return _coerce_uuid(value)

    def coerce_compared_value(self, op, value):
        return self


class JSON(types.TypeDecorator):
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

    def __init__(self, none_as_null=True):
        super().__init__(none_as_null=none_as_null)
        self.none_as_null = none_as_null

    def load_dialect_impl(self, dialect):
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import JSONB

            return dialect.type_descriptor(JSONB(none_as_null=self.none_as_null))
        if dialect.name in self._NATIVE:
            return dialect.type_descriptor(types.JSON(none_as_null=self.none_as_null))
        return dialect.type_descriptor(types.Text())

    def _is_text(self, dialect):
        return dialect.name != "postgresql" and dialect.name not in self._NATIVE

    def process_bind_param(self, value, dialect):
        if self._is_text(dialect) and value is not None:
            return json.dumps(value)
        return value

    def process_result_value(self, value, dialect):
        if self._is_text(dialect) and value is not None:
            return json.loads(value)
        return value

    @property
    def python_type(self):
        return object


def _to_utc(value, what="UTCDateTime"):
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


class UTCDateTime(types.TypeDecorator):
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
    def python_type(self):
        return datetime.datetime

    def load_dialect_impl(self, dialect):
        if dialect.name == "postgresql":
            return dialect.type_descriptor(types.DateTime(timezone=True))
        return dialect.type_descriptor(types.DateTime(timezone=False))

    def process_bind_param(self, value, dialect):
        value = _to_utc(value)
        if value is not None and dialect.name != "postgresql":
            value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=datetime.timezone.utc)
        return value.astimezone(datetime.timezone.utc)


# --------------------------------------------------------------------------
# from_dict value validation
# --------------------------------------------------------------------------


class _Invalid(Exception):
    pass


def _coerce_value(column, value):
    """Validate *value* for *column*; return the value to assign or raise _Invalid.

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


def _rule_for(type_):
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


def _coerce_uuid_value(type_, value):
    """A :class:`uuid.UUID`, its string form or its 16 bytes -> :class:`uuid.UUID`."""
    try:
        return _coerce_uuid(value)
    except ValueError as e:
        raise _Invalid(str(e)) from None


def _coerce_utc_datetime(type_, value):
    """An aware datetime or an ISO-8601 string with an offset -> aware UTC datetime;
    a naive one is refused (see :func:`_to_utc`)."""
    try:
        return _to_utc(value, "datetime")
    except ValueError as e:
        raise _Invalid(str(e)) from None


def _check_json(type_, value):
    """Anything ``json.dumps`` accepts, unchanged."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        raise _Invalid("not JSON-serializable") from None
    return value


def _coerce_enum(type_, value):
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


def _check_bool(type_, value):
    """``True`` or ``False`` only (not 0 / 1)."""
    if not isinstance(value, bool):
        raise _Invalid(f"expected a boolean, got {type(value).__name__}")
    return value


def _check_int(type_, value):
    """An ``int`` that is not a ``bool``, unchanged."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f"expected an integer, got {type(value).__name__}")
    return value


def _coerce_number(type_, value):
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


def _check_string(type_, value):
    """A ``str`` no longer than the type's length (when it has one), unchanged."""
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, got {type(value).__name__}")
    if type_.length is not None and len(value) > type_.length:
        raise _Invalid(f"longer than {type_.length} characters")
    return value


def _coerce_datetime(type_, value):
    """A datetime unchanged; an ISO-8601 string (``Z`` allowed) -> datetime."""
    if isinstance(value, datetime.datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
    raise _Invalid("expected a datetime")


def _coerce_date(type_, value):
    """A date (not a datetime) unchanged; an ISO-8601 date string -> date."""
    if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.date.fromisoformat(value)
        except ValueError:
            pass
    raise _Invalid("expected a date")


def _coerce_time(type_, value):
    """A time unchanged; an ISO-8601 time string -> time."""
    if isinstance(value, datetime.time):
        return value
    if isinstance(value, str):
        try:
            return datetime.time.fromisoformat(value)
        except ValueError:
            pass
    raise _Invalid("expected a time")


def _coerce_interval(type_, value):
    """A timedelta unchanged; a number of seconds (not a bool) -> timedelta."""
    if isinstance(value, datetime.timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.timedelta(seconds=value)
    raise _Invalid("expected a duration (timedelta or seconds)")


def _coerce_bytes(type_, value):
    """bytes, bytearray or memoryview -> bytes."""
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise _Invalid(f"expected bytes, got {type(value).__name__}")
    return bytes(value)


def _coerce_python_type(type_, value):
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
_COERCIONS = {
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


def _jsonable(value):
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


# --------------------------------------------------------------------------
# attribute specs for to_dict / from_dict
# --------------------------------------------------------------------------


def _normalize_spec(spec):
    """``["a", {"b": ["c"]}]`` / ``{"a": True, "b": [...]}`` / ``"a"`` -> {name: subspec|None}."""
    if spec is None:
        return None
    if isinstance(spec, str):
        return {spec: None}
    if isinstance(spec, dict):
        out = {}
        for key, sub in spec.items():
            out[key] = None if sub is True or sub is None else sub
        return out
    out = {}
    for item in spec:
        if isinstance(item, str):
            out[item] = None
        elif isinstance(item, dict):
            out.update(_normalize_spec(item))
        else:
            raise TypeError(f"bad attribute spec element {item!r}")
    return out


class _hybridmethod:
    """A method that receives the instance, or the class when called on the class."""

    def __init__(self, func):
        self.func = func
        self.__doc__ = func.__doc__

    def __get__(self, obj, cls):
        target = cls if obj is None else obj
        return self.func.__get__(target, cls)


def _settable_property(cls, key):
    attr = _pyinspect.getattr_static(cls, key, None)
    if isinstance(attr, property):
        return attr.fset is not None
    if isinstance(attr, hybrid_property):
        return attr.fset is not None
    return False


def _unique_keys(mapper):
    """Attribute keys of columns that are unique on their own (primary key excluded)."""
    keys = []
    for prop in mapper.column_attrs:
        col = prop.columns[0]
        if not isinstance(col, Column) or col.primary_key:
            continue
        if col.unique:
            keys.append(prop.key)
            continue
        table = col.table
        for cons in getattr(table, "constraints", ()):
            if isinstance(cons, UniqueConstraint) and list(cons.columns) == [col]:
                keys.append(prop.key)
                break
    return keys


class _Plan:
    """What from_dict will do to one object, computed before anything is changed."""

    __slots__ = ("target", "cls", "columns", "relationships", "others")

    def __init__(self, target, cls):
        self.target = target  # existing instance or None (create)
        self.cls = cls
        self.columns = []  # (key, value)
        self.relationships = []  # (key, uselist, [plans or None])
        self.others = []  # (key, value) for settable properties


# --------------------------------------------------------------------------
# the model mixin
# --------------------------------------------------------------------------


class CrudMixin:
    """Methods every model made by :func:`declarative_base` gets."""

    #: Attribute names shown by ``repr``; default: primary key + unique columns.
    _repr_attr_names = None

    @declared_attr.directive
    def __tablename__(cls):
        """snake_case of the class name; None (single-table inheritance) for a
        subclass of a mapped model that declares no primary key column of its own."""
        mapped_parent = any(
            "__table__" in base.__dict__ or "__mapper__" in base.__dict__ for base in cls.__mro__[1:]
        )
        if mapped_parent:
            own_pk = any(
                isinstance(c, Column) and c.primary_key
                for c in (v.column if isinstance(v, MappedColumn) else v for v in vars(cls).values())
            )
            if not own_pk:
                return None
        return snake_case(cls.__name__)

    # ---- construction ------------------------------------------------

    @classmethod
    def _sbio_constructor_defaults(cls):
        cached = cls.__dict__.get("_sbio_defaults")
        if cached is not None:
            return cached
        defaults = []
        for prop in sa_inspect(cls).column_attrs:
            col = prop.columns[0]
            if not isinstance(col, Column) or col.default is None:
                continue
            default = col.default
            if getattr(default, "is_sequence", False) or getattr(default, "is_clause_element", False):
                continue  # computed by the database at flush
            if default.is_scalar:
                value = default.arg
                if isinstance(value, (dict, list, set)):
                    defaults.append((prop.key, copy.deepcopy, value))
                else:
                    defaults.append((prop.key, None, value))
            elif default.is_callable:
                fn = default.arg
                if _takes_context(fn):
                    continue  # context-sensitive default: left to the flush
                defaults.append((prop.key, fn, None))
        cls._sbio_defaults = defaults
        return defaults

    def _sbio_init(self, kwargs):
        kwargs.pop("_model", None)
        cls = type(self)
        for key, fn, value in cls._sbio_constructor_defaults():
            if key in kwargs:
                continue
            if fn is None:
                kwargs[key] = value
            elif fn is copy.deepcopy:
                kwargs[key] = copy.deepcopy(value)
            else:
                kwargs[key] = fn(None)
        for key, value in kwargs.items():
            if not hasattr(cls, key):
                raise TypeError(f"{key!r} is an invalid keyword argument for {cls.__name__}")
            setattr(self, key, value)

    # ---- repr --------------------------------------------------------

    def __repr__(self):
        cls = type(self)
        names = cls._repr_attr_names
        if names is None:
            mapper = sa_inspect(cls)
            names = [mapper.get_property_by_column(c).key for c in mapper.primary_key]
            names += [k for k in _unique_keys(mapper) if k not in names]
        state = sa_inspect(self)
        mapped = state.mapper.attrs
        parts = []
        for name in names:
            if name in state.dict:
                value = state.dict[name]
            elif name in mapped:
                continue  # not loaded: never trigger a load (or DetachedInstanceError) from repr
            else:
                value = getattr(self, name, None)
            if isinstance(value, uuid.UUID):
                value = str(value)
            parts.append(f"{name}={value!r}")
        return f"<{cls.__name__}{' ' if parts else ''}{' '.join(parts)}>"

    # ---- to_dict -----------------------------------------------------

    def to_dict(self, attrs=None, *, jsonable=False):
        """This object as a dict.

        :param attrs: ``None`` gives ``_model`` (the class name) and every
            column attribute. Otherwise a spec: a list of attribute names,
            where a dict element maps a relationship name to the spec of the
            related objects (``["id", "url", {"pages": ["path"]}]``), or a dict
            ``{name: spec or True}``. A relationship named without a spec gives
            the related objects' default dicts; any other attribute (a Python
            property, say) is read with ``getattr``.
        :param jsonable: convert UUID, datetime/date/time, Decimal, timedelta
            and Enum values to their JSON forms (what ``from_dict`` accepts back).
        """
        mapper = sa_inspect(type(self))
        spec = _normalize_spec(attrs)
        out = {}
        if spec is None:
            out["_model"] = type(self).__name__
            pk = {mapper.get_property_by_column(c).key for c in mapper.primary_key}
            props = sorted(mapper.column_attrs, key=lambda p: p.key not in pk)
            for prop in props:
                value = getattr(self, prop.key)
                out[prop.key] = _jsonable(value) if jsonable else value
            return out
        relationships = mapper.relationships
        for key, sub in spec.items():
            if key == "_model":
                out[key] = type(self).__name__
                continue
            if key in relationships:
                value = getattr(self, key)
                if value is None:
                    out[key] = None
                elif relationships[key].uselist:
                    out[key] = [item.to_dict(sub, jsonable=jsonable) for item in value]
                else:
                    out[key] = value.to_dict(sub, jsonable=jsonable)
                continue
            if sub is not None:
                raise ValueError(f"{type(self).__name__}.{key} is not a relationship; it takes no nested spec")
            if not hasattr(self, key):
                raise AttributeError(f"{type(self).__name__} has no attribute {key!r}")
            value = getattr(self, key)
            out[key] = _jsonable(value) if jsonable else value
        return out

    # ---- from_dict ---------------------------------------------------

    @_hybridmethod
    def from_dict(self_or_cls, data, *, attrs=None, session=None):
        """Set attributes from *data* (e.g. a client's JSON); return the object.

        Called on the class (``Website.from_dict(data)``) it builds a new
        instance; called on an instance it updates that instance.

        - keys starting with ``_`` (``_model``...) are ignored; unknown keys are errors;
        - column values are validated against the column type and nullability
          (strings to UUID / ISO datetimes are accepted, as ``to_dict(jsonable=True)``
          produces them);
        - a relationship value is a dict (updates the related object found by
          primary key or a unique column in the current value or the session,
          or creates one), a primary key value (loads it from the session), a
          model instance, or for a collection a list of those; the collection
          becomes exactly the listed objects;
        - the primary key of a persistent object cannot be changed;
        - all problems are collected and raised as one :class:`ValidationError`
          before anything is modified.

        :param attrs: restrict the accepted keys, in ``to_dict``'s spec language
            (a relationship named without a nested spec accepts only the
            related objects' columns).
        :param session: used to look related objects up; defaults to the
            object's own session.
        """
        if isinstance(self_or_cls, type):
            obj, cls = None, self_or_cls
        else:
            obj, cls = self_or_cls, type(self_or_cls)
        if session is None and obj is not None:
            session = object_session(obj)
        if not isinstance(data, dict):
            raise ValidationError(f"expected an object, got {type(data).__name__}")
        planner = _Planner(session, unrestricted=attrs is None)
        if session is not None:
            with session.no_autoflush:
                plan = planner.plan(cls, obj, data, _normalize_spec(attrs))
        else:
            plan = planner.plan(cls, obj, data, _normalize_spec(attrs))
        if planner.errors:
            raise ValidationError(planner.errors)
        return _apply_plan(plan)


def _takes_context(fn):
    """True when SQLAlchemy will call this column default with an execution context."""
    try:
        sig = _pyinspect.signature(fn)  # follows __wrapped__ to the user's function
    except (TypeError, ValueError):
        return getattr(fn, "__wrapped__", None) is None
    required = [
        p
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    return len(required) > 0


def _join(path, key):
    return f"{path}.{key}" if path else key


def _identity_of(mapper, obj):
    return tuple(mapper.primary_key_from_instance(obj))


class _Planner:
    """Computes the :class:`_Plan` of one ``from_dict`` call without changing anything.

    ``plan()`` walks *data* recursively (into related objects) and records every
    problem in :attr:`errors` (attribute path -> message) instead of stopping at
    the first one.

    :param session: where related objects are looked up (``None``: only in the
        current values).
    :param unrestricted: ``True`` when ``from_dict`` got no ``attrs``: every key
        is accepted at every depth; otherwise only the keys of the spec.
    """

    def __init__(self, session, unrestricted):
        self.session = session
        self.unrestricted = unrestricted
        self.errors = {}

    def plan(self, cls, obj, data, spec, path=""):
        """The plan for *data* applied to *obj* (``None``: a new *cls*) under *spec*;
        *path* is where *data* sits in the whole input, for error messages."""
        mapper = sa_inspect(cls)
        plan = _Plan(obj, cls)
        columns = {p.key: p for p in mapper.column_attrs}
        relationships = mapper.relationships
        for key, value in data.items():
            if not isinstance(key, str):
                self.errors[_join(path, repr(key))] = "attribute names must be strings"
                continue
            if key.startswith("_"):
                continue
            where = _join(path, key)
            if not self.unrestricted and (spec is None or key not in spec):
                self.errors[where] = "not allowed"
            elif key in columns:
                self._column(plan, key, columns[key].columns[0], value, where)
            elif key in relationships:
                self._relationship(plan, key, relationships[key], value, spec, where)
            elif _settable_property(cls, key):
                plan.others.append((key, value))
            else:
                self.errors[where] = f"{cls.__name__} has no attribute {key!r}"
        return plan

    def _column(self, plan, key, col, value, where):
        if not isinstance(col, Column):
            self.errors[where] = "read-only"
            return
        obj = plan.target
        persistent = obj is not None and sa_inspect(obj).key is not None
        if col.primary_key and value is None and not persistent:
            return  # a new object's key is left to its default
        try:
            value = _coerce_value(col, value)
        except _Invalid as e:
            self.errors[where] = str(e)
            return
        if col.primary_key and persistent:
            if value != getattr(obj, key):
                self.errors[where] = "the primary key of a stored object cannot be changed"
            return
        plan.columns.append((key, value))

    def _relationship(self, plan, key, rel, value, spec, where):
        sub = None if spec is None else spec.get(key)
        sub_spec = _normalize_spec(sub) if sub is not None else None
        if not self.unrestricted and sub is None:
            # named without a nested spec: the related objects' columns only
            sub_spec = {p.key: None for p in rel.mapper.column_attrs}
        current = getattr(plan.target, key) if plan.target is not None else None
        if rel.uselist:
            self._collection(plan, key, rel, value, current, sub_spec, where)
        elif value is None:
            if _nullable_relationship(rel):
                plan.relationships.append((key, rel, None))
            else:
                self.errors[where] = "may not be null"
        else:
            current = [current] if current is not None else []
            plan.relationships.append((key, rel, self._related(rel, value, current, sub_spec, where)))

    def _collection(self, plan, key, rel, value, current, spec, where):
        if _collection_type(rel) is None:
            self.errors[where] = "from_dict supports list and set collections only"
            return
        if value is None:
            value = []
        if not isinstance(value, (list, tuple)):
            self.errors[where] = "expected a list"
            return
        current = list(current) if current is not None else []
        items = [self._related(rel, item, current, spec, f"{where}[{i}]") for i, item in enumerate(value)]
        plan.relationships.append((key, rel, items))

    def _related(self, rel, item, current, spec, where):
        """One related value: a model instance (kept), a primary key value (the
        object it names) or a dict (a plan for the object found by primary key
        or unique column in *current* or the session, or for a new one)."""
        target_cls = rel.mapper.class_
        if isinstance(item, target_cls):
            return item
        try:
            if not isinstance(item, dict):
                return self._referenced(rel.mapper, item, current)
            existing = self._existing(rel.mapper, item, current)
        except _Invalid as e:
            self.errors[where] = str(e)
            return None
        return self.plan(target_cls, existing, item, spec, where)

    def _referenced(self, mapper, value, current):
        """The object whose (single-column) primary key is *value*, or _Invalid."""
        pk_cols = list(mapper.primary_key)
        if len(pk_cols) != 1:
            raise _Invalid("expected an object (composite primary key)")
        found = _find_by_identity(mapper, current, self.session, (_coerce_value(pk_cols[0], value),))
        if found is None:
            pk_key = mapper.get_property_by_column(pk_cols[0]).key
            raise _Invalid(f"no {mapper.class_.__name__} with {pk_key}={value!r}")
        return found

    def _existing(self, mapper, item, current):
        """The object a dict describes: by its full primary key, else by the first
        unique column whose value finds one; ``None`` for a new object."""
        pk_cols = list(mapper.primary_key)
        pk_keys = [mapper.get_property_by_column(c).key for c in pk_cols]
        if all(item.get(k) is not None for k in pk_keys):
            ident = tuple(_coerce_value(c, item[k]) for c, k in zip(pk_cols, pk_keys))
            return _find_by_identity(mapper, current, self.session, ident)
        return self._by_unique_key(mapper, item, current)

    def _by_unique_key(self, mapper, item, current):
        for ukey in _unique_keys(mapper):
            if item.get(ukey) is None:
                continue
            try:
                uval = _coerce_value(mapper.column_attrs[ukey].columns[0], item[ukey])
            except _Invalid:
                continue  # reported by the nested plan
            existing = next((o for o in current if getattr(o, ukey) == uval), None)
            if existing is None and self.session is not None:
                cls = mapper.class_
                existing = self.session.execute(
                    sqlalchemy.select(cls).where(getattr(cls, ukey) == uval)
                ).scalar_one_or_none()
            if existing is not None:
                return existing
        return None


def _nullable_relationship(rel):
    if rel.direction is not MANYTOONE:
        return True
    return all(col.nullable for col in rel.local_columns)


def _collection_type(rel):
    """list or set (or a subclass) for a collection relationship, None if unsupported."""
    cc = rel.collection_class
    if cc is None:
        return list
    if isinstance(cc, type) and issubclass(cc, (list, set)):
        return cc
    return None


def _find_by_identity(mapper, current, session, ident):
    for obj in current:
        if _identity_of(mapper, obj) == ident:
            return obj
    if session is not None:
        return session.get(mapper.class_, ident if len(ident) > 1 else ident[0])
    return None


def _apply_plan(plan):
    obj = plan.target if plan.target is not None else plan.cls()
    for key, value in plan.columns:
        setattr(obj, key, value)
    for key, rel, items in plan.relationships:
        if rel.uselist:
            resolved = [_apply_plan(i) if isinstance(i, _Plan) else i for i in items]
            setattr(obj, key, _collection_type(rel)(resolved))
        else:
            setattr(obj, key, _apply_plan(items) if isinstance(items, _Plan) else items)
    for key, value in plan.others:
        setattr(obj, key, value)
    return obj


# --------------------------------------------------------------------------
# declarative_base
# --------------------------------------------------------------------------

_bases_lock = threading.Lock()
_bases = weakref.WeakSet()  # every base made by declarative_base


def _validate_utc_on_set(target, value, oldvalue, initiator):
    return _to_utc(value, f"{type(target).__name__}.{initiator.key}")


def _install_validators(mapper, cls):
    for prop in mapper.column_attrs:
        col = prop.columns[0]
        if isinstance(col, Column) and isinstance(col.type, UTCDateTime):
            attr = getattr(cls, prop.key)
            if not event.contains(attr, "set", _validate_utc_on_set):
                event.listen(attr, "set", _validate_utc_on_set, retval=True)


def declarative_base(cls=None, *, metadata=None, type_annotation_map=None):
    """Class decorator turning a plain class into a SQLAlchemy declarative base.

    ::

        @declarative_base
        class Base:
            id = Column(UUID(), primary_key=True, default=uuid.uuid4)

    Columns and methods of the decorated class are inherited by every model.
    Models get a snake_case ``__tablename__`` (``WebsitePage`` ->
    ``website_page``; set ``__tablename__`` yourself to override), the
    :class:`CrudMixin` methods (``to_dict``, ``from_dict``, ``__repr__``) and
    a constructor that applies column defaults immediately: ``Website().id``
    is already a UUID before any flush. Scalar defaults and zero-argument
    callables are applied; callables taking an execution context and SQL
    expression defaults are left to the flush. Mutable scalar defaults
    (dict/list/set) are copied per instance.

    Also usable with arguments: ``@declarative_base(metadata=MetaData(schema="x"))``.
    """
    if cls is None:
        return lambda c: declarative_base(c, metadata=metadata, type_annotation_map=type_annotation_map)

    def __init__(self, **kwargs):
        self._sbio_init(kwargs)

    namespace = {
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
        "__init__": __init__,
    }
    if metadata is not None:
        namespace["metadata"] = metadata
    if type_annotation_map is not None:
        namespace["type_annotation_map"] = type_annotation_map
    base = type(cls.__name__, (cls, CrudMixin, DeclarativeBase), namespace)
    event.listen(base, "mapper_configured", _install_validators, propagate=True)
    with _bases_lock:
        _bases.add(base)
    return base


# --------------------------------------------------------------------------
# change notifications
# --------------------------------------------------------------------------

def _live_notifier(channels):
    """Default notifier: ``sbio.live.notify(channels, trigger="commit")``.

    So a commit notifies like :func:`sbio.live.notify` does from where the
    commit runs: in a handler, that handler's server; in a task, the
    server(s) running its lifecycle; anywhere else, every running server.
    """
    try:
        from sbio.live import notify
    except ImportError as e:
        if e.name in ("sbio.live", "sbio"):
            log.debug("sbio.live is not available; change notification %s dropped", channels)
            return
        raise
    notify(channels, trigger="commit")


_CHANGES_KEY = "_sbio_changes"


def _manager_of(session):
    return getattr(type(session), "_sbio_manager", None)


def _wants_notifications(session):
    manager = _manager_of(session)
    return manager is not None and manager.notify_changes


def _boundary(session):
    """Key of the transaction changes are recorded in: innermost savepoint, else None (the root)."""
    return session.get_nested_transaction()


def _record(session, channels):
    if not channels:
        return
    changes = session.info.setdefault(_CHANGES_KEY, {})
    changes.setdefault(_boundary(session), set()).update(channels)


def _on_after_flush(session, flush_context):
    if not _wants_notifications(session):
        return
    channels = set()
    for state, (isdelete, listonly) in flush_context.states.items():
        if listonly:
            continue
        obj = state.obj()
        if obj is None:
            continue
        if not (isdelete or state.key is None or session.is_modified(obj)):
            continue
        mapper = state.mapper
        for table in mapper.tables:
            channels.add(table.name)
        for rel in mapper.relationships:
            if rel.secondary is not None and getattr(rel.secondary, "name", None):
                if isdelete or state.attrs[rel.key].history.has_changes():
                    channels.add(rel.secondary.name)
    _record(session, channels)


def _on_do_orm_execute(orm_execute_state):
    """Bulk ``update()`` / ``delete()`` / ``insert()`` through the session count as changes."""
    if not (orm_execute_state.is_update or orm_execute_state.is_delete or orm_execute_state.is_insert):
        return
    session = orm_execute_state.session
    if not _wants_notifications(session):
        return
    table = getattr(orm_execute_state.statement, "table", None)
    name = getattr(table, "name", None)
    if name:
        _record(session, {name})


def _on_after_commit(session):
    changes = session.info.get(_CHANGES_KEY)
    if not changes:
        return
    nested = session.get_nested_transaction()
    if nested is not None:
        # a savepoint was released: its changes now belong to the enclosing transaction
        done = changes.pop(nested, None)
        if done:
            parent = nested.parent
            while parent is not None and not parent.nested:
                parent = parent.parent
            changes.setdefault(parent, set()).update(done)
        return
    channels = set().union(*changes.values())
    changes.clear()
    manager = _manager_of(session)
    if not channels or manager is None or not manager.notify_changes:
        return
    notifier = manager.notifier or _live_notifier
    try:
        notifier(sorted(channels))
    except Exception:
        log.exception("change notification for %s failed (the commit stands)", sorted(channels))


def _on_after_soft_rollback(session, previous_transaction):
    changes = session.info.get(_CHANGES_KEY)
    if not changes:
        return
    if previous_transaction.nested:
        changes.pop(previous_transaction, None)
    elif previous_transaction.parent is None:
        changes.clear()


def _on_after_transaction_end(session, transaction):
    if transaction.parent is None:
        session.info.pop(_CHANGES_KEY, None)


# --------------------------------------------------------------------------
# sessions
# --------------------------------------------------------------------------


class SbioSession(_SASession):
    """The session class a :class:`SessionManager` hands out (plus its ``SessionMixin``)."""

    #: the SessionManager subclass this session belongs to
    _sbio_manager = None

    def notify_on_commit(self, *channels):
        """Also notify these channels (strings or model classes) after the
        next successful commit, e.g. after changing rows with raw SQL."""
        names = set()
        for channel in channels:
            names.add(channel if isinstance(channel, str) else model_channel(channel))
        if _manager_of(self) is None or _manager_of(self).notify_changes:
            _record(self, names)


event.listen(SbioSession, "after_flush", _on_after_flush)
event.listen(SbioSession, "do_orm_execute", _on_do_orm_execute)
event.listen(SbioSession, "after_commit", _on_after_commit)
event.listen(SbioSession, "after_soft_rollback", _on_after_soft_rollback)
event.listen(SbioSession, "after_transaction_end", _on_after_transaction_end)


class SessionManager:
    """Subclass it once per database::

        class Session(SessionManager):
            engine = create_engine(config["db.url"])

            class SessionMixin:                 # optional: methods for every session
                def website(self, url):
                    return self.scalars(select(Website).filter_by(url=url)).one()

        with Session() as s:
            s.add(Website(url="https://example.org"))
            s.website("https://example.org")

    ``with Session() as s`` opens a new session, commits when the block ends
    normally, rolls back when it raises, and always closes it. After a
    successful commit the channels of the changed tables are notified once.

    Class attributes:

    ``engine``
        The SQLAlchemy engine (may be assigned later, e.g. after reading the
        configuration; it is looked up each time a session is opened, which
        is how the ``sbio_db`` test fixture rebinds it).
    ``base``
        The declarative base whose tables ``initialize_db`` creates. Optional:
        by default the base made by :func:`declarative_base` in the same
        module, or the only one there is.
    ``notify_changes``
        ``False`` turns change notifications off for this manager.
    ``notifier``
        A function ``notifier(channels)`` called after each commit instead of
        the default, ``sbio.live.notify(channels, trigger="commit")`` (which
        reaches the server(s) of the context the commit runs in).
    ``session_options``
        Extra ``sessionmaker`` arguments. sbio's defaults:
        ``expire_on_commit=False`` (objects stay usable after the ``with``
        block; the session is closed anyway).
    """

    engine = None
    base = None
    notify_changes = True
    notifier = None
    session_options = {}
    session_class = SbioSession
    session_factory = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        parent_session_class = cls.session_class
        mixin = cls.__dict__.get("SessionMixin")
        bases = (mixin, parent_session_class) if mixin is not None else (parent_session_class,)
        cls.session_class = type(
            f"{cls.__name__}Session",
            bases,
            {"_sbio_manager": cls, "__module__": cls.__module__},
        )
        options = {"expire_on_commit": False}
        options.update(cls.session_options)
        cls.session_factory = sessionmaker(class_=cls.session_class, **options)

    # ---- engine / metadata ------------------------------------------

    @classmethod
    def get_engine(cls):
        if cls.engine is None:
            raise RuntimeError(
                f"{cls.__name__}.engine is not set: assign an engine, e.g. "
                f"{cls.__name__}.engine = sbio.sa.create_engine(url)"
            )
        return cls.engine

    @classmethod
    def get_base(cls):
        if cls.base is not None:
            return cls.base
        with _bases_lock:
            bases = list(_bases)
        same_module = [b for b in bases if b.__module__ == cls.__module__]
        if len(same_module) == 1:
            return same_module[0]
        if len(bases) == 1:
            return bases[0]
        raise RuntimeError(
            f"cannot tell which declarative base {cls.__name__} manages; set "
            f"{cls.__name__}.base = YourBase"
        )

    @classmethod
    def get_metadata(cls):
        return cls.get_base().metadata

    @classmethod
    def initialize_db(cls, drop=False):
        """Create the tables that do not exist yet (``drop=True``: drop all of them first).

        Never called implicitly: call it from your startup code or a migration step.
        """
        engine = cls.get_engine()
        metadata = cls.get_metadata()
        if drop:
            metadata.drop_all(engine)
        metadata.create_all(engine)

    # ---- sessions -----------------------------------------------------

    @classmethod
    def new_session(cls, **kwargs):
        """A new session bound to the current engine (you commit and close it)."""
        kwargs.setdefault("bind", cls.get_engine())
        return cls.session_factory(**kwargs)

    def __init__(self, **kwargs):
        self._kwargs = kwargs
        self.session = None

    def __enter__(self):
        if self.session is not None:
            raise RuntimeError("this SessionManager instance is already in use; call Session() again")
        self.session = type(self).new_session(**self._kwargs)
        return self.session

    def __exit__(self, exc_type, exc, tb):
        session, self.session = self.session, None
        try:
            if exc_type is None:
                session.commit()
            else:
                session.rollback()
        finally:
            session.close()
        return False


# --------------------------------------------------------------------------
# engines
# --------------------------------------------------------------------------


def _psycopg_blocks_gevent():
    """True when gevent patched ``select`` but psycopg chose its blocking C wait
    (because psycopg was imported before the monkey-patching)."""
    waiting = sys.modules.get("psycopg.waiting")
    monkey = sys.modules.get("gevent.monkey")
    if waiting is None or monkey is None:
        return False
    try:
        patched = monkey.is_module_patched("select")
    except Exception:
        return False
    return patched and getattr(waiting, "wait", None) is getattr(waiting, "wait_c", object())


def create_engine(url, **kwargs):
    """``sqlalchemy.create_engine`` with defaults that suit a gevent server.

    - PostgreSQL: ``pool_size=10, max_overflow=20, pool_pre_ping=True``.
      ``pool_size + max_overflow`` bounds how many greenlets can use the
      database at the same time; the others wait (cooperatively) up to
      ``pool_timeout`` seconds. Size it to your concurrency.
    - SQLite: ``PRAGMA foreign_keys=ON`` on every connection
      (``sqlite_foreign_keys=False`` to disable); an in-memory database gets
      one shared connection (``StaticPool``) so every greenlet sees the same
      data.

    Anything you pass wins over these defaults.
    """
    url = make_url(url)
    backend = url.get_backend_name()
    foreign_keys = kwargs.pop("sqlite_foreign_keys", True)
    if backend == "sqlite":
        if url.database in (None, "", ":memory:"):
            kwargs.setdefault("poolclass", StaticPool)
            connect_args = dict(kwargs.pop("connect_args", {}))
            connect_args.setdefault("check_same_thread", False)
            kwargs["connect_args"] = connect_args
    elif backend == "postgresql":
        kwargs.setdefault("pool_pre_ping", True)
        if "poolclass" not in kwargs:
            kwargs.setdefault("pool_size", 10)
            kwargs.setdefault("max_overflow", 20)
        if _psycopg_blocks_gevent():
            log.warning(
                "psycopg was imported before gevent monkey-patched 'select': database "
                "calls will block every greenlet. Call gevent.monkey.patch_all() first."
            )
    engine = sqlalchemy.create_engine(url, **kwargs)
    if backend == "sqlite" and foreign_keys:
        event.listen(engine, "connect", _sqlite_foreign_keys)
    return engine


def _sqlite_foreign_keys(dbapi_connection, connection_record):
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()
