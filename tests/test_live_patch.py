"""sbio.live.patch: JSON Patch (RFC 6902) made by the server and applied by the clients."""
import copy
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sbio.live.patch import PatchError, apply_patch, make_patch, same

# JSON values as json.loads gives them: what a result is after encoding
json_scalars = (st.none() | st.booleans() | st.integers(-5, 5)
                | st.floats(allow_nan=False, allow_infinity=False, width=16)
                | st.sampled_from(["", "a", "b", "~", "/", "~1", "a/b"]))
json_values = st.recursive(
    json_scalars,
    lambda children: (st.lists(children, max_size=6)
                      | st.dictionaries(st.sampled_from(["a", "b", "c", "~0", "x/y", ""]),
                                        children, max_size=4)),
    max_leaves=30,
)


def canonical(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def roundtrip(value):
    """What a client decodes: the patch travels as JSON."""
    return json.loads(json.dumps(value))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(json_values, json_values)
def test_apply_of_make_gives_the_new_value_exactly(old, new):
    before = copy.deepcopy(old)
    patch = roundtrip(make_patch(old, new))
    result = apply_patch(old, patch)
    assert canonical(result) == canonical(new)  # 1, 1.0, True and -0.0 are told apart
    assert same(result, new)
    assert canonical(old) == canonical(before)  # neither value is changed
    assert (patch == []) == same(old, new)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(json_values, max_size=8), st.data())
def test_list_edits_give_small_patches(items, data):
    """One insert, delete, change or move in a list is one operation."""
    new = list(items)
    action = data.draw(st.sampled_from(["insert", "delete", "move", "change"]))
    if action == "insert" or not items:
        new.insert(data.draw(st.integers(0, len(new))), {"fresh": len(new)})
    elif action == "delete":
        del new[data.draw(st.integers(0, len(new) - 1))]
    elif action == "move":
        i, j = data.draw(st.integers(0, len(new) - 1)), data.draw(st.integers(0, len(new) - 1))
        new.insert(j, new.pop(i))
    else:
        new[data.draw(st.integers(0, len(new) - 1))] = {"changed": True}
    patch = make_patch(items, new)
    assert len(patch) <= 1 or action == "change"
    assert canonical(apply_patch(items, roundtrip(patch))) == canonical(new)


def test_one_changed_card_of_500_is_one_replace():
    cards = [{"id": i, "column": "To do", "title": f"card {i}"} for i in range(500)]
    moved = copy.deepcopy(cards)
    moved[250]["column"] = "Done"
    assert make_patch(cards, moved) == [{"op": "replace", "path": "/250/column", "value": "Done"}]
    reordered = cards[:10] + cards[11:400] + [cards[10]] + cards[400:]
    assert make_patch(cards, reordered) == [{"op": "move", "from": "/10", "path": "/399"}]
    assert make_patch(cards, cards[:3] + cards[4:]) == [{"op": "remove", "path": "/3"}]
    assert make_patch({"cards": cards}, {"cards": [*cards, {"id": 500}]}) == [
        {"op": "add", "path": "/cards/500", "value": {"id": 500}}]


def test_json_equality_is_strict():
    assert make_patch([1, True, 0.0], [1.0, 1, -0.0]) == [
        {"op": "replace", "path": "/0", "value": 1.0},
        {"op": "replace", "path": "/1", "value": 1},
        {"op": "replace", "path": "/2", "value": -0.0}]
    assert make_patch({"a": None}, {"a": None}) == []
    assert make_patch({"a": None}, {}) == [{"op": "remove", "path": "/a"}]
    assert make_patch({}, {"a/b": 1, "~": 2}) == [
        {"op": "add", "path": "/a~1b", "value": 1}, {"op": "add", "path": "/~0", "value": 2}]
    assert make_patch(1, "x") == [{"op": "replace", "path": "", "value": "x"}]


def test_apply_every_rfc_6902_operation():
    doc = {"a": [1, 2, 3], "b": {"c": "d"}}
    ops = [
        {"op": "add", "path": "/a/-", "value": 4},
        {"op": "add", "path": "/a/0", "value": 0},
        {"op": "remove", "path": "/a/1"},
        {"op": "replace", "path": "/b/c", "value": "e"},
        {"op": "move", "from": "/b/c", "path": "/f"},
        {"op": "copy", "from": "/a", "path": "/g"},
        {"op": "add", "path": "/g/0", "value": "only in g"},
        {"op": "test", "path": "/f", "value": "e"},
    ]
    assert apply_patch(doc, ops) == {"a": [0, 2, 3, 4], "b": {}, "f": "e",
                                     "g": ["only in g", 0, 2, 3, 4]}
    assert doc == {"a": [1, 2, 3], "b": {"c": "d"}}  # unchanged
    assert apply_patch(doc, [{"op": "replace", "path": "", "value": 7}]) == 7
    assert apply_patch(doc, []) is doc


@pytest.mark.parametrize("patch, message", [
    ({"op": "add"}, "list of operations"),
    (["add"], "is an object"),
    ([{"op": "frobnicate", "path": ""}], "unknown operation"),
    ([{"op": "add", "path": "a", "value": 1}], "not a JSON pointer"),
    ([{"op": "add", "path": "/a/9", "value": 1}], "out of range"),
    ([{"op": "add", "path": "/a/01", "value": 1}], "not an array index"),
    ([{"op": "remove", "path": "/nope"}], "no member"),
    ([{"op": "remove", "path": ""}], "whole document"),
    ([{"op": "replace", "path": "/x/y", "value": 1}], "no member"),
    ([{"op": "add", "path": "/b/c/d", "value": 1}], "cannot look up"),
    ([{"op": "add", "path": "/b"}], "needs a value"),
    ([{"op": "move", "from": "/b", "path": "/b/c"}], "into itself"),
    ([{"op": "test", "path": "/a/0", "value": True}], "test failed"),
])
def test_bad_patches_raise_and_change_nothing(patch, message):
    doc = {"a": [1], "b": {"c": "d"}}
    with pytest.raises(PatchError, match=message):
        apply_patch(doc, patch)
    assert doc == {"a": [1], "b": {"c": "d"}}
