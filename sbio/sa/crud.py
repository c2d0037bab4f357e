""":class:`CrudMixin` (``to_dict``, ``from_dict``, ``repr``, constructor defaults) and
:class:`ValidationError`."""
import copy
import inspect as _pyinspect
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Concatenate, Generic, ParamSpec, TypeVar, cast

from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import MappedColumn, Mapper, Session, declared_attr, object_session
from sqlalchemy.schema import Column, ColumnDefault

from sbio.channels import snake_case
from sbio.errors import RpcError

from .coercion import _jsonable
from .plan import AttrSpec, _apply_plan, _normalize_spec, _Planner, _unique_keys

_P = ParamSpec("_P")
_R = TypeVar("_R")

#: A column default the constructor applies: (attribute key, how to make the
#: value, the value): ``fn`` None -> the value itself; ``copy.deepcopy`` -> a
#: copy of the (mutable) value; else ``fn(None)``.
_Default = tuple[str, "Callable[..., Any] | None", object]


class ValidationError(RpcError, ValueError):
    """``from_dict`` (or a column type) rejected a value.

    A subclass of :class:`sbio.RpcError` with code ``"bad_request"``: raised
    in a handler it reaches the client as
    ``{"ok": false, "error": {"code": "bad_request", "message": ...}}``.
    ``errors`` maps each offending attribute path (``"websites[0].url"``) to
    its problem; the message lists all of them.
    """

    def __init__(self, errors: str | Mapping[str, str]) -> None:
        if isinstance(errors, str):
            errors = {"": errors}
        self.errors = dict(errors)
        message = "; ".join(f"{k}: {v}" if k else v for k, v in self.errors.items())
        super().__init__("bad_request", message)


class _hybridmethod(Generic[_P, _R]):
    """A method that receives the instance, or the class when called on the class."""

    def __init__(self, func: Callable[Concatenate[Any, _P], _R]) -> None:
        self.func = func
        self.__doc__ = func.__doc__

    def __get__(self, obj: object, cls: type | None = None) -> Callable[_P, _R]:
        target = cls if obj is None else obj
        bound: Callable[_P, _R] = self.func.__get__(target, cls)
        return bound


class CrudMixin:
    """Methods every model made by :func:`declarative_base` gets."""

    #: Attribute names shown by ``repr``; default: primary key + unique columns.
    _repr_attr_names: ClassVar[Sequence[str] | None] = None
    #: What _sbio_constructor_defaults found, cached in each class's own __dict__
    _sbio_defaults: ClassVar[list[_Default]]

    @declared_attr.directive
    def __tablename__(cls) -> str | None:
        """snake_case of the class name; None (single-table inheritance) for a
        subclass of a mapped model that declares no primary key column of its own."""
        klass = cast("type[CrudMixin]", cls)  # a directive is called with the class
        mapped_parent = any(
            "__table__" in base.__dict__ or "__mapper__" in base.__dict__
            for base in klass.__mro__[1:]
        )
        if mapped_parent:
            attributes = (
                v.column if isinstance(v, MappedColumn) else v for v in vars(klass).values()
            )
            own_pk = any(isinstance(c, Column) and c.primary_key for c in attributes)
            if not own_pk:
                return None
        return snake_case(klass.__name__)

    # ---- construction ------------------------------------------------

    @classmethod
    def _sbio_constructor_defaults(cls) -> list[_Default]:
        cached: list[_Default] | None = cls.__dict__.get("_sbio_defaults")
        if cached is not None:
            return cached
        defaults: list[_Default] = []
        mapper: Mapper[Any] = sa_inspect(cls)
        for prop in mapper.column_attrs:
            col = prop.columns[0]
            if not isinstance(col, Column):
                continue
            default = col.default
            if not isinstance(default, ColumnDefault) or default.is_clause_element:
                continue  # none, or a Sequence or SQL expression computed by the database
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

    def _sbio_init(self, kwargs: dict[str, Any]) -> None:
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

    def __repr__(self) -> str:
        cls = type(self)
        names = list(cls._repr_attr_names or ())
        if cls._repr_attr_names is None:
            mapper: Mapper[Any] = sa_inspect(cls)
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

    def to_dict(self, attrs: AttrSpec = None, *, jsonable: bool = False) -> dict[str, Any]:
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
        mapper: Mapper[Any] = sa_inspect(type(self))
        spec = _normalize_spec(attrs)
        out: dict[str, Any] = {}
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
                raise ValueError(
                    f"{type(self).__name__}.{key} is not a relationship; it takes no nested spec"
                )
            if not hasattr(self, key):
                raise AttributeError(f"{type(self).__name__} has no attribute {key!r}")
            value = getattr(self, key)
            out[key] = _jsonable(value) if jsonable else value
        return out

    # ---- from_dict ---------------------------------------------------

    @_hybridmethod
    def from_dict(self_or_cls: "CrudMixin | type[CrudMixin]", data: object, *,
                  attrs: AttrSpec = None, session: Session | None = None) -> Any:
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
        obj: CrudMixin | None
        cls: type[CrudMixin]
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


def _takes_context(fn: Callable[..., object]) -> bool:
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
