"""What ``from_dict`` will do, computed and checked before anything is changed.

A :class:`_Planner` turns the input into a tree of :class:`_Plan` objects and
collects every problem; ``_apply_plan`` then carries a plan out. Also the
attribute-spec language ``to_dict`` and ``from_dict`` share (``_normalize_spec``).
"""
import inspect as _pyinspect
from collections.abc import Iterable
from typing import Any

import sqlalchemy
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import MANYTOONE, Mapper, RelationshipProperty, Session
from sqlalchemy.schema import Column, UniqueConstraint

from .coercion import _coerce_value, _Invalid

#: An attribute spec as ``to_dict`` / ``from_dict`` take it: ``"a"``,
#: ``["a", {"b": ["c"]}]`` or ``{"a": True, "b": [...]}`` (``None``: no spec).
AttrSpec = Any
#: A spec normalized by :func:`_normalize_spec`: name -> nested spec or None.
_Spec = dict[str, AttrSpec]


def _normalize_spec(spec: AttrSpec) -> _Spec | None:
    """``["a", {"b": ["c"]}]`` / ``{"a": True, "b": [...]}`` / ``"a"`` -> {name: subspec|None}."""
    if spec is None:
        return None
    if isinstance(spec, str):
        return {spec: None}
    if isinstance(spec, dict):
        out: _Spec = {}
        for key, sub in spec.items():
            out[key] = None if sub is True or sub is None else sub
        return out
    out = {}
    for item in spec:
        if isinstance(item, str):
            out[item] = None
        elif isinstance(item, dict):
            out.update(_normalize_spec(item) or {})
        else:
            raise TypeError(f"bad attribute spec element {item!r}")
    return out


def _settable_property(cls: type, key: str) -> bool:
    attr = _pyinspect.getattr_static(cls, key, None)
    if isinstance(attr, property):
        return attr.fset is not None
    if isinstance(attr, hybrid_property):
        return attr.fset is not None
    return False


def _unique_keys(mapper: Mapper[Any]) -> list[str]:
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

    def __init__(self, target: object | None, cls: type) -> None:
        self.target = target  # existing instance or None (create)
        self.cls = cls
        self.columns: list[tuple[str, object]] = []  # (key, value)
        # (key, relationship, item): an item is a _Plan, an object or None;
        # a list of items for a collection
        self.relationships: list[tuple[str, RelationshipProperty[Any], Any]] = []
        self.others: list[tuple[str, object]] = []  # (key, value) for settable properties


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _identity_of(mapper: Mapper[Any], obj: object) -> tuple[Any, ...]:
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

    def __init__(self, session: Session | None, unrestricted: bool) -> None:
        self.session = session
        self.unrestricted = unrestricted
        self.errors: dict[str, str] = {}

    def plan(self, cls: type, obj: object | None, data: dict[Any, Any], spec: _Spec | None,
             path: str = "") -> _Plan:
        """The plan for *data* applied to *obj* (``None``: a new *cls*) under *spec*;
        *path* is where *data* sits in the whole input, for error messages."""
        mapper: Mapper[Any] = sa_inspect(cls)
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

    def _column(self, plan: _Plan, key: str, col: object, value: object, where: str) -> None:
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

    def _relationship(self, plan: _Plan, key: str, rel: RelationshipProperty[Any],
                      value: object, spec: _Spec | None, where: str) -> None:
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
            item = self._related(rel, value, current, sub_spec, where)
            plan.relationships.append((key, rel, item))

    def _collection(self, plan: _Plan, key: str, rel: RelationshipProperty[Any], value: object,
                    current: Iterable[object] | None, spec: _Spec | None, where: str) -> None:
        if _collection_type(rel) is None:
            self.errors[where] = "from_dict supports list and set collections only"
            return
        if value is None:
            value = []
        if not isinstance(value, (list, tuple)):
            self.errors[where] = "expected a list"
            return
        current = list(current) if current is not None else []
        items = [
            self._related(rel, item, current, spec, f"{where}[{i}]") for i, item in enumerate(value)
        ]
        plan.relationships.append((key, rel, items))

    def _related(self, rel: RelationshipProperty[Any], item: object, current: list[object],
                 spec: _Spec | None, where: str) -> object:
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

    def _referenced(self, mapper: Mapper[Any], value: object, current: list[object]) -> object:
        """The object whose (single-column) primary key is *value*, or _Invalid."""
        pk_cols = list(mapper.primary_key)
        if len(pk_cols) != 1:
            raise _Invalid("expected an object (composite primary key)")
        ident = (_coerce_value(pk_cols[0], value),)
        found = _find_by_identity(mapper, current, self.session, ident)
        if found is None:
            pk_key = mapper.get_property_by_column(pk_cols[0]).key
            raise _Invalid(f"no {mapper.class_.__name__} with {pk_key}={value!r}")
        return found

    def _existing(self, mapper: Mapper[Any], item: dict[str, Any],
                  current: list[object]) -> object | None:
        """The object a dict describes: by its full primary key, else by the first
        unique column whose value finds one; ``None`` for a new object."""
        pk_cols = list(mapper.primary_key)
        pk_keys = [mapper.get_property_by_column(c).key for c in pk_cols]
        if all(item.get(k) is not None for k in pk_keys):
            ident = tuple(_coerce_value(c, item[k]) for c, k in zip(pk_cols, pk_keys, strict=True))
            return _find_by_identity(mapper, current, self.session, ident)
        return self._by_unique_key(mapper, item, current)

    def _by_unique_key(self, mapper: Mapper[Any], item: dict[str, Any],
                       current: list[object]) -> object | None:
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


def _nullable_relationship(rel: RelationshipProperty[Any]) -> bool:
    if rel.direction is not MANYTOONE:
        return True
    return all(col.nullable for col in rel.local_columns)


def _collection_type(rel: RelationshipProperty[Any]) -> type | None:
    """list or set (or a subclass) for a collection relationship, None if unsupported."""
    cc = rel.collection_class
    if cc is None:
        return list
    if isinstance(cc, type) and issubclass(cc, (list, set)):
        return cc
    return None


def _find_by_identity(mapper: Mapper[Any], current: Iterable[object], session: Session | None,
                      ident: tuple[Any, ...]) -> object | None:
    for obj in current:
        if _identity_of(mapper, obj) == ident:
            return obj
    if session is not None:
        return session.get(mapper.class_, ident if len(ident) > 1 else ident[0])
    return None


def _apply_plan(plan: _Plan) -> Any:
    obj = plan.target if plan.target is not None else plan.cls()
    for key, value in plan.columns:
        setattr(obj, key, value)
    for key, rel, items in plan.relationships:
        if rel.uselist:
            resolved = [_apply_plan(i) if isinstance(i, _Plan) else i for i in items]
            collection = _collection_type(rel)
            assert collection is not None, "_Planner._collection refused the others"
            setattr(obj, key, collection(resolved))
        else:
            setattr(obj, key, _apply_plan(items) if isinstance(items, _Plan) else items)
    for key, value in plan.others:
        setattr(obj, key, value)
    return obj
