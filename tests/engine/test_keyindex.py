"""The compact key index against plain Python sets and the 'ok over error, then newest' rule."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.engine.keyindex import KeyIndex, KeySet, decode, encode


def hex_id(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


# Image ids, ids sharing their first 64 bits with another (so the first word collides), and text keys.
SHARED = [hex_id(0)[:16] + hex_id(k)[16:] for k in (1, 2, 3)]
KEYS = st.one_of(
    st.integers(0, 30).map(hex_id),
    st.sampled_from(SHARED),
    st.sampled_from(["a", "b", "path/x.jpg", "", hex_id(5).upper(), "é/ü.png"]),
)


def test_image_ids_round_trip_through_codes_even_from_a_sliced_array():
    ids = pa.array([hex_id(i) for i in range(10)], pa.string()).slice(3, 5)
    codes, all_ids = encode(ids)
    assert all_ids and codes.shape == (5, 4)
    assert decode(codes).to_pylist() == ids.to_pylist()
    assert encode(ids.cast(pa.large_string()))[0].tolist() == codes.tolist()


def test_other_keys_are_hashed_and_flagged():
    codes, all_ids = encode(pa.array([hex_id(1), hex_id(2).upper(), "x"]))
    assert not all_ids
    assert len({tuple(c) for c in codes.tolist()}) == 3  # upper case is another key, not the same image


@settings(max_examples=200, deadline=None)
@given(st.lists(KEYS, max_size=40), st.lists(KEYS, max_size=40))
def test_contains_is_set_membership(members, queries):
    found = KeySet.of(members).contains(encode(queries)[0])
    assert found.tolist() == [q in set(members) for q in queries]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.tuples(KEYS, st.booleans()), max_size=12), max_size=5))
def test_current_row_is_ok_over_error_then_newest(parts):
    index = KeyIndex.allocate([len(part) for part in parts])
    for i, part in enumerate(parts):
        keys = pa.array([k for k, _ in part], pa.string())
        codes, all_ids = encode(keys)
        index.fill(i, codes, np.array([ok for _, ok in part], bool), None if all_ids else keys)
    rows = [(k, ok) for part in parts for k, ok in part]
    expected: dict[str, int] = {}
    for position, (key, ok) in enumerate(rows):
        best = expected.get(key)
        if best is None or ok or not rows[best][1]:
            expected[key] = position
    current = index.current()
    assert current.tolist() == sorted(expected.values())
    assert index.ids(current).to_pylist() == [rows[p][0] for p in current]
    subset = np.arange(0, len(rows), 2)
    among = {}
    for position in subset.tolist():
        key, ok = rows[position]
        if key not in among or ok or not rows[among[key]][1]:
            among[key] = position
    assert index.current(subset).tolist() == sorted(among.values())
    for position in range(len(rows)):
        part, row = (int(x[0]) for x in index.part_of(np.array([position])))
        assert parts[part][row] == rows[position]
