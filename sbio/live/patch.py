"""JSON Patch (RFC 6902) between JSON values: the delta pushes of live data.

:func:`make_patch` is what the server sends a ``"delta": true`` subscriber
instead of a whole result; :func:`apply_patch` is what a client does with it
(sbio.js has the same function in JavaScript; the Python clients,
``sbio.testing`` and ``sbio.Client``, use this one). Pure functions on JSON
values (dicts with string keys, lists, strings, numbers, booleans, None);
the only import of sbio is :class:`sbio.errors.PatchError`.

Why JSON Patch and not JSON merge patch (RFC 7386): live results are mostly
lists (a board's cards, a chat's messages), and a merge patch replaces a
list whole, so one changed card of 500 would resend all 500; a merge patch
also cannot set a value to ``null`` (``null`` means "delete the key"). JSON
Patch addresses list elements by index, which is what makes the common
changes small:

* one element changed: the operations on that element only (recursively, a
  ``replace`` of the one field that changed);
* elements inserted or removed anywhere: ``add`` / ``remove`` at their
  indexes (the common prefix and suffix of the two lists are skipped);
* one element moved (a rotation of the changed span): one ``move``.

Anything else within the changed span of a list is diffed element by
element. :func:`make_patch` never emits ``copy`` or ``test``;
:func:`apply_patch` understands all six operations.

Equality is JSON equality, stricter than Python's ``==``: ``1``, ``1.0`` and
``True`` differ, and so do ``0.0`` and ``-0.0``, so applying the patch gives
exactly the value a whole push would have given.
"""
import copy
import math
from typing import Any

from ..errors import PatchError

__all__ = ["make_patch", "apply_patch", "PatchError"]


# -- making a patch ---------------------------------------------------------------------------


def make_patch(old: Any, new: Any) -> list[dict[str, Any]]:
    """The JSON Patch operations turning *old* into *new* (``[]`` when they are equal).

    The operations' values are parts of *new*, not copies: encode the patch
    before changing *new*.
    """
    ops: list[dict[str, Any]] = []
    _diff(old, new, "", ops)
    return ops


def _escape(key: str) -> str:
    if "~" in key or "/" in key:
        return key.replace("~", "~0").replace("/", "~1")
    return key


_MISSING = object()
_copysign = math.copysign


def same(a: Any, b: Any) -> bool:
    """True when *a* and *b* are the same JSON value (``1``, ``1.0``, ``True`` all differ)."""
    kind = type(a)
    if kind is not type(b):
        return False
    if kind is str or kind is int:
        return bool(a == b)
    if kind is dict:
        if len(a) != len(b):
            return False
        for key, value in a.items():  # the leaves inline: most of a result is strings
            other = b.get(key, _MISSING)
            leaf = type(value)
            if leaf is not type(other):
                return False
            if leaf is str or leaf is int or leaf is bool or value is None:
                if value != other:
                    return False
            elif not same(value, other):
                return False
        return True
    if kind is list:
        return len(a) == len(b) and all(map(same, a, b))
    if kind is float:
        return a == b and _copysign(1.0, a) == _copysign(1.0, b)
    return bool(a == b)


def _diff(a: Any, b: Any, path: str, ops: list[dict[str, Any]]) -> None:
    kind = type(a)
    if kind is dict and type(b) is dict:
        for key in a:
            if key not in b:
                ops.append({"op": "remove", "path": path + "/" + _escape(key)})
        for key, value in b.items():
            sub = path + "/" + _escape(key)
            if key in a:
                _diff(a[key], value, sub, ops)
            else:
                ops.append({"op": "add", "path": sub, "value": value})
    elif kind is list and type(b) is list:
        _diff_list(a, b, path, ops)
    elif not same(a, b):
        ops.append({"op": "replace", "path": path, "value": b})


def _diff_list(a: list[Any], b: list[Any], path: str, ops: list[dict[str, Any]]) -> None:
    n, m = len(a), len(b)
    shortest = min(n, m)
    start = 0
    while start < shortest and same(a[start], b[start]):
        start += 1
    tail = 0
    while tail < shortest - start and same(a[n - 1 - tail], b[m - 1 - tail]):
        tail += 1
    old, new = a[start:n - tail], b[start:m - tail]  # the changed spans
    la, lb = len(old), len(new)
    if la == lb and la >= 2:
        last = start + la - 1
        if same(old[0], new[-1]) and all(map(same, old[1:], new[:-1])):
            ops.append({"op": "move", "from": f"{path}/{start}", "path": f"{path}/{last}"})
            return
        if same(old[-1], new[0]) and all(map(same, old[:-1], new[1:])):
            ops.append({"op": "move", "from": f"{path}/{last}", "path": f"{path}/{start}"})
            return
    both = min(la, lb)
    for k in range(both):
        _diff(old[k], new[k], f"{path}/{start + k}", ops)
    for k in range(both, lb):  # inserted: added in order, after the common part
        ops.append({"op": "add", "path": f"{path}/{start + k}", "value": new[k]})
    for k in range(la - 1, both - 1, -1):  # removed: from the last, so indexes stay valid
        ops.append({"op": "remove", "path": f"{path}/{start + k}"})


# -- applying a patch -------------------------------------------------------------------------


def _tokens(pointer: Any) -> list[str]:
    if not isinstance(pointer, str) or (pointer and pointer[0] != "/"):
        raise PatchError(f"not a JSON pointer: {pointer!r}")
    if not pointer:
        return []
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]


def _index(token: str, size: int, appending: bool) -> int:
    if appending and token == "-":
        return size
    if not token.isdigit() or (len(token) > 1 and token[0] == "0") or not token.isascii():
        raise PatchError(f"not an array index: {token!r}")
    index = int(token)
    if index > size or (index == size and not appending):
        raise PatchError(f"array index {index} out of range (length {size})")
    return index


class _Applier:
    """Applies operations to a value, copying each container it changes once (copy on write)."""

    def __init__(self, value: Any) -> None:
        self.root = value
        self.copies: dict[int, Any] = {}  # id -> our copy (held, so no id is reused meanwhile)

    def _own(self, container: Any) -> Any:
        """*container*, or a copy of it that this apply may change."""
        kind = type(container)
        if kind is not dict and kind is not list:
            raise PatchError(f"cannot look up a member of a {kind.__name__}")
        if id(container) in self.copies:
            return container
        copy = dict(container) if kind is dict else list(container)
        self.copies[id(copy)] = copy
        return copy

    def _parent(self, tokens: list[str]) -> Any:
        """The container holding the last token, made writable along the way."""
        node = self.root = self._own(self.root)
        for token in tokens[:-1]:
            if type(node) is dict:
                if token not in node:
                    raise PatchError(f"no member {token!r}")
                child = node[token] = self._own(node[token])
            else:
                index = _index(token, len(node), False)
                child = node[index] = self._own(node[index])
            node = child
        return node

    def get(self, tokens: list[str]) -> Any:
        node = self.root
        for token in tokens:
            if type(node) is dict:
                if token not in node:
                    raise PatchError(f"no member {token!r}")
                node = node[token]
            elif type(node) is list:
                node = node[_index(token, len(node), False)]
            else:
                raise PatchError(f"cannot look up {token!r} in a {type(node).__name__}")
        return node

    def add(self, tokens: list[str], value: Any) -> None:
        if not tokens:
            self.root = value
            return
        parent, token = self._parent(tokens), tokens[-1]
        if type(parent) is dict:
            parent[token] = value
        else:
            parent.insert(_index(token, len(parent), True), value)

    def remove(self, tokens: list[str]) -> Any:
        if not tokens:
            raise PatchError("cannot remove the whole document")
        parent, token = self._parent(tokens), tokens[-1]
        if type(parent) is dict:
            if token not in parent:
                raise PatchError(f"no member {token!r} to remove")
            return parent.pop(token)
        return parent.pop(_index(token, len(parent), False))

    def replace(self, tokens: list[str], value: Any) -> None:
        if not tokens:
            self.root = value
            return
        parent, token = self._parent(tokens), tokens[-1]
        if type(parent) is dict:
            if token not in parent:
                raise PatchError(f"no member {token!r} to replace")
            parent[token] = value
        else:
            parent[_index(token, len(parent), False)] = value


def apply_patch(value: Any, patch: Any) -> Any:
    """*value* with the JSON Patch operations *patch* applied; *value* itself is not changed.

    Containers on the paths the operations touch are copied (once each);
    everything else is shared with *value*. The values the patch carries
    are used as they are (not copied).

    :raises PatchError: a malformed operation, a path that does not exist,
        or a failed ``test``; *value* is unchanged then too.
    """
    if not isinstance(patch, list):
        raise PatchError(f"a JSON Patch is a list of operations, got {type(patch).__name__}")
    applier = _Applier(value)
    for op in patch:
        if not isinstance(op, dict):
            raise PatchError(f"a JSON Patch operation is an object, got {op!r}")
        kind = op.get("op")
        tokens = _tokens(op.get("path"))
        if kind in ("add", "replace", "test") and "value" not in op:
            raise PatchError(f"{kind!r} needs a value")
        if kind == "add":
            applier.add(tokens, op["value"])
        elif kind == "remove":
            applier.remove(tokens)
        elif kind == "replace":
            applier.replace(tokens, op["value"])
        elif kind in ("move", "copy"):
            source = _tokens(op.get("from"))
            if kind == "move":
                if tokens[:len(source)] == source and len(tokens) > len(source):
                    raise PatchError("cannot move a value into itself")
                moved = applier.remove(source)
            else:  # a copy, which later operations may change independently
                moved = copy.deepcopy(applier.get(source))
            applier.add(tokens, moved)
        elif kind == "test":
            if not same(applier.get(tokens), op["value"]):
                raise PatchError(f"test failed at {op.get('path')!r}")
        else:
            raise PatchError(f"unknown operation {kind!r}")
    return applier.root
