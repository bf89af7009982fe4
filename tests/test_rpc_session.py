"""Unit tests of the Cap'n Web session state machine, driven message by message with a toy target
(no transport): ids, pulls, pipelining, E-order, references, releases, peer calls, limits."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rpc_toy import Toy

from cloudsession.rpc.codec import LimitExceeded, ProtocolError, RpcLimits
from cloudsession.rpc.session import PeerAborted, RpcSession


class Peer:
    """Drives one session the way a client would and records what the session sends."""

    def __init__(self, *, batch: bool = True, limits: RpcLimits | None = None, main=None) -> None:
        self.main = main or Toy()
        self.sent: list[list] = []
        self.session = RpcSession(self.main, self.sent.append, limits=limits or RpcLimits(), batch=batch)

    def send(self, *messages) -> None:
        for message in messages:
            self.session.receive(json.dumps(message))

    def call(self, method, *args, on=0) -> None:
        self.send(["push", ["pipeline", on, [method], list(args)]])

    async def settle(self) -> list[list]:
        self.session.end_of_input()
        await self.session.drain()
        return self.sent


def push(method, *args, on=0):
    return ["push", ["pipeline", on, [method], list(args)]]


async def test_push_pull_resolves_and_unpulled_calls_still_run():
    peer = Peer()
    peer.send(push("record", "a"), push("record", "b"), ["pull", 2])
    assert await peer.settle() == [["resolve", 2, 2]]
    assert peer.main.calls == ["a", "b"]


async def test_a_second_pull_sends_nothing_more():
    peer = Peer()
    peer.send(push("echo", "x"), ["pull", 1], ["pull", 1])
    assert await peer.settle() == [["resolve", 1, "x"]]


async def test_pipelined_arguments_use_an_earlier_result():
    peer = Peer()
    peer.send(
        push("make", "a"),
        push("join", ["pipeline", 1, ["id"]], ["pipeline", 1, ["secret"]], ["pipeline", 1, ["list", 1, 0]]),
        ["push", ["pipeline", 1, ["id"]]],
        ["pull", 2],
        ["pull", 3],
    )
    assert await peer.settle() == [["resolve", 2, "id-a/secret-a/2"], ["resolve", 3, "id-a"]]


async def test_rejection_propagates_through_a_pipeline():
    peer = Peer()
    peer.send(push("fail", "boom"), push("join", ["pipeline", 1, ["id"]]), ["pull", 2])
    assert await peer.settle() == [["reject", 2, ["error", "RangeError", "boom"]]]


async def test_calls_are_delivered_in_message_order():
    peer = Peer()
    peer.send(*[push("record", i) for i in range(20)], ["pull", 20])
    await peer.settle()
    assert peer.main.calls == list(range(20))


async def test_results_come_back_in_completion_order():
    peer = Peer()
    peer.send(push("slow", 60, "slow"), push("slow", 0, "fast"), ["pull", 1], ["pull", 2])
    assert await peer.settle() == [["resolve", 2, "fast"], ["resolve", 1, "slow"]]


async def test_unknown_method_private_names_and_instance_state_are_not_functions():
    peer = Peer()
    for i, name in enumerate(["noSuchMethod", "_private", "hidden", "__class__", "__init__", "constructor"], 1):
        peer.send(push(name), ["pull", i])
    sent = await peer.settle()
    assert [m[2] for m in sent] == [
        ["error", "TypeError", f"'{name}' is not a function."]
        for name in ["noSuchMethod", "_private", "hidden", "__class__", "__init__", "constructor"]
    ]


async def test_reading_through_undefined_is_a_type_error():
    peer = Peer()
    peer.send(push("make", "a"), ["push", ["pipeline", 1, ["missing", "deeper"]]], ["pull", 2])
    assert await peer.settle() == [["reject", 2, ["error", "TypeError", "Cannot read properties of undefined (reading 'deeper')"]]]


async def test_internal_errors_are_generic_and_logged(caplog):
    peer = Peer()
    with caplog.at_level(logging.ERROR, logger="cloudsession.rpc.session"):
        peer.send(push("crash"), ["pull", 1])
        sent = await peer.settle()
    assert sent == [["reject", 1, ["error", "Error", "Internal error"]]]
    assert "internal detail" not in json.dumps(sent)
    assert "internal detail" in caplog.text


async def test_unserializable_result_rejects_with_type_error():
    peer = Peer()
    peer.send(push("unserializable"), ["pull", 1])
    assert await peer.settle() == [["reject", 1, ["error", "TypeError", "Cannot serialize value: [object set]"]]]


async def test_javascript_calling_convention():
    peer = Peer()
    peer.send(push("pair", 1, 2, 3), ["pull", 1], push("pair"), ["pull", 2], push("pair", "x"), ["pull", 3])
    assert await peer.settle() == [
        ["resolve", 1, [[1, 2]]],  # extra arguments dropped
        ["resolve", 2, [[["undefined"], "default"]]],  # missing required ones are undefined
        ["resolve", 3, [["x", "default"]]],
    ]


async def test_targets_are_exported_by_reference_and_pipelined():
    peer = Peer(batch=False)
    peer.send(push("handle", "h1"), ["push", ["pipeline", 1, ["info"], []]], ["pull", 1], ["pull", 2])
    await peer.session.drain()
    assert peer.sent == [["resolve", 1, ["export", -1]], ["resolve", 2, {"name": "h1"}]]
    peer.send(["push", ["pipeline", -1, ["info"], []]], ["pull", 3])
    await peer.session.drain()
    assert peer.sent[-1] == ["resolve", 3, {"name": "h1"}]
    peer.send(["push", ["pipeline", -1, ["name"], []]], ["pull", 4])  # instance attribute
    await peer.session.drain()
    assert peer.sent[-1] == ["reject", 4, ["error", "TypeError", "'name' is not a function."]]
    peer.send(["release", -1, 1])
    with pytest.raises(ProtocolError, match="no such entry on exports table: -1"):
        peer.send(["push", ["pipeline", -1, ["info"], []]])


async def test_the_same_target_reuses_its_export_id_until_released():
    peer = Peer(batch=False)
    peer.send(push("same_handle"), ["pull", 1], push("same_handle"), ["pull", 2])
    await peer.session.drain()
    assert peer.sent == [["resolve", 1, ["export", -1]], ["resolve", 2, ["export", -1]]]
    peer.send(["release", -1, 1], ["push", ["pipeline", -1, ["info"], []]], ["pull", 3])
    await peer.session.drain()
    assert peer.sent[-1] == ["resolve", 3, {"name": "shared"}], "one reference is still held"
    peer.send(["release", -1, 1], push("same_handle"), ["pull", 4])
    await peer.session.drain()
    assert peer.sent[-1] == ["resolve", 4, ["export", -2]], "ids are never reused"


async def test_release_drops_results():
    peer = Peer(batch=False)
    peer.send(push("echo", 1), ["pull", 1])
    await peer.session.drain()
    peer.send(["release", 1, 1])
    with pytest.raises(ProtocolError, match="no such export ID: 1"):
        peer.send(["pull", 1])


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (["pull", 7], "no such export ID: 7"),
        (["release", 7, 1], "no such export ID: 7"),
        (["release", 0, 0], "bad RPC message"),
        (["release", 0, -1], "bad RPC message"),
        (["push", ["pipeline", 5, ["x"], []]], "no such entry on exports table: 5"),
        (["push", ["pipeline", 1, ["x"], []]], "no such entry on exports table: 1"),  # its own id
        (["bogus", 1], "bad RPC message"),
        (["push"], "bad RPC message"),
        (["pull", "1"], "bad RPC message"),
        (["push", [1, 2]], "unknown special value"),
        (["push", ["pipeline", 0, ["echo"], [["export", 1]]]], "must be negative"),
        (["push", ["pipeline", 0, ["echo"], [["promise", 0]]]], "must be negative"),
    ],
)
async def test_protocol_errors(message, error):
    with pytest.raises(ProtocolError, match=error):
        Peer().send(message)


async def test_peer_abort_ends_the_session():
    peer = Peer(batch=False)
    with pytest.raises(PeerAborted, match="going away"):
        peer.send(["abort", ["error", "Error", "going away"]])


async def test_resolutions_for_unknown_ids_are_ignored():
    peer = Peer()
    peer.send(["resolve", 5, 1], ["reject", -3, ["error", "Error", "x"]])
    assert await peer.settle() == []


async def test_client_stub_in_a_batch_is_rejected_and_released():
    peer = Peer()
    peer.send(push("callback", ["export", -1], "hi"), ["pull", 1])
    assert await peer.settle() == [
        ["release", -1, 1],
        ["reject", 1, ["error", "Error", "The server cannot call back into the client over an HTTP batch; use a WebSocket."]],
    ]


async def test_client_promise_in_a_batch_is_rejected_not_left_hanging():
    peer = Peer()
    peer.send(push("echo", ["promise", -1]), ["pull", 1])
    sent = await asyncio.wait_for(peer.settle(), 5)
    assert sent[-1] == ["reject", 1, ["error", "Error", "Batch RPC request ended before the client resolved a promise."]]


async def test_client_promise_resolved_within_the_batch_is_used():
    peer = Peer()
    peer.send(push("echo", ["promise", -1]), ["pull", 1], ["resolve", -1, {"v": [[1]]}])
    assert await peer.settle() == [["release", -1, 1], ["resolve", 1, {"v": [[1]]}]]


async def test_server_calls_a_client_stub_over_a_websocket_session():
    peer = Peer(batch=False)
    peer.send(push("callback", ["export", -1], "ping"), ["pull", 1])
    await asyncio.sleep(0.01)
    assert peer.sent == [["push", ["pipeline", -1, [], ["ping"]]], ["pull", 1]]
    peer.send(["resolve", 1, "pong"])
    await peer.session.drain()
    assert peer.sent[2:] == [["release", 1, 1], ["release", -1, 1], ["resolve", 1, "pong"]]


async def test_client_stub_rejection_reaches_the_caller():
    peer = Peer(batch=False)
    peer.send(push("callback", ["export", -1], "ping"), ["pull", 1])
    await asyncio.sleep(0.01)
    peer.send(["reject", 1, ["error", "RangeError", "client says no"]])
    await peer.session.drain()
    assert peer.sent[-1] == ["reject", 1, ["error", "RangeError", "client says no"]]


async def test_closing_rejects_calls_waiting_on_the_peer():
    peer = Peer(batch=False)
    peer.send(push("callback", ["export", -1], "ping"), ["pull", 1])
    await asyncio.sleep(0.01)
    peer.session.close("WebSocket closed")
    await peer.session.drain()
    assert len(peer.sent) == 2, "nothing is sent after the close"


async def test_stream_messages_are_pulled_and_released_automatically():
    peer = Peer(batch=False)
    peer.send(["stream", ["pipeline", 0, ["echo"], [5]]])
    await peer.session.drain()
    assert peer.sent == [["resolve", 1, 5]]
    with pytest.raises(ProtocolError, match="no such export ID: 1"):
        peer.send(["pull", 1])


async def test_unsupported_map_and_pipe_are_rejected_cleanly():
    peer = Peer()
    peer.send(
        push("make", "a"),
        ["push", ["remap", 1, [], [], [["pipeline", 0]]]],
        ["pipe"],
        ["push", ["pipeline", 3, ["x"], []]],
        ["pull", 2],
        ["pull", 4],
    )
    assert await peer.settle() == [
        ["reject", 2, ["error", "TypeError", "map() is not supported by this server."]],
        ["reject", 4, ["error", "TypeError", "Streams are not supported by this server."]],
    ]


async def test_push_count_limit_in_a_batch():
    peer = Peer(limits=RpcLimits(max_pushes_per_batch=3))
    peer.send(push("echo", 1), push("echo", 2), push("echo", 3))
    with pytest.raises(LimitExceeded, match="limit 3"):
        peer.send(push("echo", 4))


async def test_concurrent_call_limit_rejects_extra_calls():
    peer = Peer(batch=False, limits=RpcLimits(max_concurrent_calls=2))
    peer.send(push("slow", 50, "a"), push("slow", 50, "b"), push("slow", 0, "c"), ["pull", 3])
    await peer.session.drain()
    assert peer.sent == [["reject", 3, ["error", "Error", "Too many concurrent calls on this connection (limit 2)."]]]
    await asyncio.sleep(0.1)
    peer.send(push("echo", "d"), ["pull", 4])
    await peer.session.drain()
    assert peer.sent[-1] == ["resolve", 4, "d"], "the limit counts running calls only"


async def test_export_table_limit():
    peer = Peer(batch=False, limits=RpcLimits(max_exports=3))
    peer.send(push("echo", 1), push("echo", 2))
    with pytest.raises(LimitExceeded, match="limit 3"):
        peer.send(push("echo", 3))


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10), lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c, max_size=4), max_leaves=20))
async def test_any_json_message_is_handled_or_rejected_cleanly(value):
    peer = Peer()
    for message in (value, ["push", value], ["push", ["pipeline", 0, ["echo"], [value]]], ["pull", value]):
        try:
            peer.send(message)
        except ProtocolError:
            pass
    try:
        peer.send(["pull", 1])
    except ProtocolError:
        pass
    await asyncio.wait_for(peer.settle(), 5)
