"""Unit tests of the Cap'n Web codec: every wire form, the limits, and property tests that any
JSON value either decodes or is rejected with a ProtocolError (never another exception)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudsession.rpc.codec import (
    INVALID_DATE,
    UNDEFINED,
    BigInt,
    LimitExceeded,
    PeerExportRef,
    PipelineRef,
    ProtocolError,
    RemapRef,
    RpcError,
    RpcLimits,
    RpcTarget,
    decode,
    dumps,
    encode,
    parse_message,
)

LIMITS = RpcLimits()


def wire(value):
    """Encode to the exact text a peer would receive, then parse it back."""
    return json.loads(dumps(encode(value, LIMITS)))


def roundtrip(value):
    return decode(wire(value), LIMITS).value


# -- decoding ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ([[1, [[2, 3]], {"a": [[]]}]], [1, [2, 3], {"a": []}]),
        (["undefined"], UNDEFINED),
        (["inf"], math.inf),
        (["-inf"], -math.inf),
        (["bigint", "12345678901234567890"], 12345678901234567890),
        (["bigint", "-5"], -5),
        (["date", 0], datetime(1970, 1, 1, tzinfo=UTC)),
        (["date", 1757214689123], datetime(2025, 9, 7, 3, 11, 29, 123000, tzinfo=UTC)),
        (["date", None], INVALID_DATE),
        (["bytes", "AQID+g"], b"\x01\x02\x03\xfa"),
        (["bytes", "AQID+g=="], b"\x01\x02\x03\xfa"),
        (["bytes", "AAA=", "Uint16Array"], b"\x00\x00"),
        (["bytes", ""], b""),
        (["error", "TypeError", "x"], RpcError("TypeError", "x")),
        (["error", "CustomError", "y", "stack", {"code": 5}], RpcError("Error", "y")),
        ({"d": ["date", 0], "u": ["undefined"]}, {"d": datetime(1970, 1, 1, tzinfo=UTC), "u": UNDEFINED}),
        (None, None),
        ("text", "text"),
    ],
)
def test_decodes_every_wire_form(expr, expected):
    assert decode(expr, LIMITS).value == expected


def test_nan_and_bigint_types():
    assert math.isnan(decode(["nan"], LIMITS).value)
    value = decode(["bigint", "5"], LIMITS).value
    assert isinstance(value, BigInt) and value == 5
    assert encode(value, LIMITS) == ["bigint", "5"], "a bigint that arrived as one goes back as one"


def test_json_numbers_keep_their_javascript_meaning():
    # JavaScript peers read every JSON number as a double.
    assert decode(2**60, LIMITS).value == float(2**60)
    assert decode(10**400, LIMITS).value == math.inf
    assert decode(-(10**400), LIMITS).value == -math.inf


def test_references_become_placeholders_innermost_first():
    decoded = decode(["pipeline", 0, ["f"], [["pipeline", 1, ["id"]], ["export", -1], ["promise", -2]]], LIMITS)
    call = decoded.value
    assert isinstance(call, PipelineRef) and call.path == ["f"] and call.nested_refs
    inner, stub, promise = call.args
    assert isinstance(inner, PipelineRef) and inner.args is None and inner.path == ["id"]
    assert isinstance(stub, PeerExportRef) and stub.kind == "export" and stub.import_id == -1
    assert isinstance(promise, PeerExportRef) and promise.kind == "promise"
    assert decoded.refs == [inner, stub, promise, call]
    assert not decode(["pipeline", 0, ["f"], [1, [[2]]]], LIMITS).value.nested_refs
    assert isinstance(decode(["remap", 1, [], [], []], LIMITS).value, RemapRef)


@pytest.mark.parametrize(
    "expr",
    [
        [2, 3],  # an unescaped array
        [],
        ["url", "https://example.com"],
        ["bigint", 5],
        ["bigint", "12a"],
        ["bigint", ""],
        ["date", "yesterday"],
        ["date", True],
        ["date", 1e300],  # beyond what datetime holds
        ["bytes", "not base64!"],
        ["bytes", 1],
        ["error", "Error"],
        ["error", 1, "x"],
        ["undefined", 1],
        ["pipeline", "0", ["x"]],
        ["pipeline", 0, "x"],
        ["pipeline", 0, [{"a": 1}]],
        ["pipeline", 0, ["x"], "args"],
        ["pipeline", True, ["x"]],
        ["export", "x"],
        ["remap", 1, [], []],
        {"a": [1]},
    ],
)
def test_rejects_malformed_expressions(expr):
    with pytest.raises(ProtocolError):
        decode(expr, LIMITS)


def test_depth_limit_matches_the_javascript_client():
    nested: object = 1
    for _ in range(255):
        nested = {"a": nested}
    decode(nested, LIMITS)  # 255 levels of objects, the value at depth 255: accepted
    with pytest.raises(ProtocolError, match="maximum depth of 256"):
        decode({"a": nested}, LIMITS)
    array_nested: object = 1
    for _ in range(300):
        array_nested = [[array_nested]]
    with pytest.raises(ProtocolError, match="maximum depth"):
        decode(array_nested, LIMITS)


def test_bigint_digit_limit():
    decode(["bigint", "9" * 4300], LIMITS)
    with pytest.raises(LimitExceeded, match="4300 digits"):
        decode(["bigint", "9" * 4301], LIMITS)


# -- parsing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["", "[", "{}", "[]", "[1]", '"push"', "null", '["push",NaN]', '["push",Infinity]', '["push",1]x', "[" * 5000 + "]" * 5000],
)
def test_parse_rejects_bad_messages_cleanly(text):
    with pytest.raises(ProtocolError):
        parse_message(text, LIMITS)


def test_parse_accepts_whitespace_and_crlf():
    assert parse_message(' ["pull", 1]\r', LIMITS) == ["pull", 1]


def test_message_size_limit_counts_utf8_bytes():
    small = RpcLimits(max_message_bytes=64)
    parse_message('["push","' + "x" * 40 + '"]', small)
    with pytest.raises(LimitExceeded):
        parse_message('["push","' + "é" * 40 + '"]', small)  # 40 characters, 80 bytes


# -- encoding ------------------------------------------------------------------------------------


def test_encodes_the_common_subset_only():
    value = {
        "list": [1, [2, 3], {"a": []}],
        "tuple": (1,),
        "nan": math.nan,
        "inf": math.inf,
        "ninf": -math.inf,
        "big": 2**53,
        "safe": 2**53 - 1,
        "bytes": b"\x01\x02\x03\xfa",
        "date": datetime(1970, 1, 1, 0, 0, 1, 500, tzinfo=UTC),
        "naive": datetime(1970, 1, 1, 0, 0, 2),
        "undef": UNDEFINED,
        "err": RpcError("RangeError", "boom"),
        "py_err": KeyError("secret detail"),
        "nul": None,
    }
    assert encode(value, LIMITS) == {
        "list": [[1, [[2, 3]], {"a": [[]]}]],
        "tuple": [[1]],
        "nan": ["nan"],
        "inf": ["inf"],
        "ninf": ["-inf"],
        "big": ["bigint", "9007199254740992"],
        "safe": 9007199254740991,
        "bytes": ["bytes", "AQID+g"],
        "date": ["date", 1000],
        "naive": ["date", 2000],
        "undef": ["undefined"],
        "err": ["error", "RangeError", "boom"],
        "py_err": ["error", "Error", "Internal error"],
        "nul": None,
    }


@pytest.mark.parametrize("value", [{1, 2}, object(), {1: "int key"}, frozenset()])
def test_unserializable_values_raise_a_type_error(value):
    with pytest.raises(RpcError) as info:
        encode(value, LIMITS)
    assert info.value.name == "TypeError" and info.value.message.startswith("Cannot serialize value")


def test_cycles_hit_the_depth_limit():
    cyclic: list = []
    cyclic.append(cyclic)
    with pytest.raises(RpcError, match="maximum allowed depth"):
        encode(cyclic, LIMITS)


def test_targets_and_functions_go_through_the_export_hook():
    target = RpcTarget()
    exported = []

    def hook(value):
        exported.append(value)
        return ["export", -len(exported)]

    assert encode({"t": target, "f": len}, LIMITS, hook) == {"t": ["export", -1], "f": ["export", -2]}
    assert exported == [target, len]
    with pytest.raises(RpcError, match="Cannot serialize"):
        encode(target, LIMITS)


def test_dumps_is_compact_and_survives_lone_surrogates():
    assert dumps(["resolve", 1, {"a": "é"}]) == '["resolve",1,{"a":"é"}]'
    text = dumps(["resolve", 1, "\ud800"])
    assert text == '["resolve",1,"\\ud800"]'
    text.encode("utf-8")
    with pytest.raises(ValueError):
        dumps(["resolve", 1, math.nan])  # never a bare NaN: encode() turns it into ["nan"]


def test_invalid_date_round_trips():
    assert encode(INVALID_DATE, LIMITS) == ["date", None]


# -- properties ------------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
any_json = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30,
)
dates = st.datetimes(
    min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)
).map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000))
python_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    # Lone surrogates (from "\ud800" escapes). Two in a row would form a pair, which JSON and
    # JavaScript treat as the astral character itself, so generate one at a time.
    | st.builds(lambda a, c, b: a + c + b, st.text(max_size=3), st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), st.text(max_size=3))
    | st.binary(max_size=20)
    | dates
    | st.just(UNDEFINED)
    | st.builds(RpcError, st.sampled_from(["Error", "TypeError", "RangeError"]), st.text(max_size=10))
)
python_values = st.recursive(
    python_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30,
)


def _normalise_ints(value):
    """JSON numbers beyond 2**53 are doubles for every peer (and for our decoder)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53 - 1:
        return value  # these travel as ["bigint", ...] and come back exact
    if isinstance(value, dict):
        return {k: _normalise_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise_ints(v) for v in value]
    return value


@settings(max_examples=300)
@given(python_values)
def test_any_supported_value_round_trips(value):
    assert roundtrip(value) == _normalise_ints(value)


@settings(max_examples=300)
@given(any_json)
def test_any_json_value_decodes_or_is_rejected_cleanly(value):
    try:
        decode(value, LIMITS)
    except ProtocolError:
        pass


@settings(max_examples=300)
@given(any_json)
def test_any_json_message_parses_or_is_rejected_cleanly(value):
    text = json.dumps(value)
    try:
        message = parse_message(text, LIMITS)
    except ProtocolError:
        return
    assert message == json.loads(text)


@given(st.lists(json_scalars, max_size=5))
def test_plain_lists_are_escaped_and_come_back(values):
    assert wire(values) == [[encode(v, LIMITS) for v in values]]
    assert roundtrip(values) == values


def test_naive_and_aware_dates_mean_utc():
    naive = datetime(2020, 1, 1, 12)
    assert roundtrip(naive) == naive.replace(tzinfo=UTC)
    other_zone = datetime(2020, 1, 1, 12, tzinfo=UTC).astimezone(__import__("datetime").timezone(timedelta(hours=5)))
    assert roundtrip(other_zone) == datetime(2020, 1, 1, 12, tzinfo=UTC)
