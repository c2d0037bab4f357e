""":func:`declarative_base` and the attribute validators it installs on every model."""
import datetime
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, overload

from sqlalchemy import MetaData, event
from sqlalchemy.orm import DeclarativeBase, Mapper
from sqlalchemy.schema import Column

if TYPE_CHECKING:
    from sqlalchemy.orm.attributes import AttributeEventToken

from .crud import CrudMixin
from .notifications import row_spec
from .types import UTCDateTime, _to_utc

_bases_lock = threading.Lock()
_bases: weakref.WeakSet[type] = weakref.WeakSet()  # every base made by declarative_base


def _validate_utc_on_set(target: object, value: object, oldvalue: object,
                         initiator: "AttributeEventToken") -> datetime.datetime | None:
    return _to_utc(value, f"{type(target).__name__}.{initiator.key}")


def _install_validators(mapper: Mapper[Any], cls: type) -> None:
    row_spec(mapper)  # a wrong __notify_parents__ fails when the model is configured
    for prop in mapper.column_attrs:
        col = prop.columns[0]
        if isinstance(col, Column) and isinstance(col.type, UTCDateTime):
            attr = getattr(cls, prop.key)
            if not event.contains(attr, "set", _validate_utc_on_set):
                event.listen(attr, "set", _validate_utc_on_set, retval=True)


@overload
def declarative_base(cls: type, *, metadata: MetaData | None = None,
                     type_annotation_map: Mapping[Any, Any] | None = None) -> type[Any]: ...
@overload
def declarative_base(cls: None = None, *, metadata: MetaData | None = None,
                     type_annotation_map: Mapping[Any, Any] | None = None
                     ) -> Callable[[type], type[Any]]: ...
def declarative_base(cls: type | None = None, *, metadata: MetaData | None = None,
                     type_annotation_map: Mapping[Any, Any] | None = None
                     ) -> type[Any] | Callable[[type], type[Any]]:
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
        return lambda c: declarative_base(c, metadata=metadata,
                                          type_annotation_map=type_annotation_map)

    def __init__(self: CrudMixin, **kwargs: Any) -> None:
        self._sbio_init(kwargs)

    namespace: dict[str, Any] = {
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
