"""Every RPC of every agentmesh service, found by walking the generated modules (agentmesh.*.v1.*_pb2),
a generic way to call one with grpc's sync API, and hypothesis strategies built from message
descriptors. A new RPC or field is fuzzed with no new test code."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from hypothesis import strategies as st

import agentmesh


@dataclasses.dataclass(frozen=True)
class Rpc:
    descriptor: MethodDescriptor

    @property
    def service(self) -> str:
        return self.descriptor.containing_service.full_name

    @property
    def name(self) -> str:
        return self.descriptor.name

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.name}"

    @property
    def short(self) -> str:
        return f"{self.descriptor.containing_service.name}.{self.name}"

    @property
    def input(self) -> Any:
        return message_factory.GetMessageClass(self.descriptor.input_type)

    @property
    def output(self) -> Any:
        return message_factory.GetMessageClass(self.descriptor.output_type)

    @property
    def client_streaming(self) -> bool:
        return bool(self.descriptor.client_streaming)

    @property
    def server_streaming(self) -> bool:
        return bool(self.descriptor.server_streaming)


def _pb2_modules() -> Iterator[Any]:
    for service in sorted(m.name for m in pkgutil.iter_modules(agentmesh.__path__)):
        try:
            package = importlib.import_module(f"agentmesh.{service}.v1")
        except ModuleNotFoundError:
            continue
        for module in sorted(m.name for m in pkgutil.iter_modules(package.__path__)):
            if module.endswith("_pb2"):
                yield importlib.import_module(f"agentmesh.{service}.v1.{module}")


def all_rpcs() -> list[Rpc]:
    rpcs = []
    for module in _pb2_modules():
        for service in module.DESCRIPTOR.services_by_name.values():
            rpcs.extend(Rpc(method) for method in service.methods)
    return rpcs


# -- calling ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    """`code` is the call's status; for a stream we stopped reading ourselves it is None ("open")."""

    code: grpc.StatusCode | None
    details: str
    responses: list[Any]

    @property
    def rejected(self) -> bool:
        return self.code is not None and self.code != grpc.StatusCode.OK


def call(
    channel: grpc.Channel,
    rpc: Rpc,
    requests: Sequence[Any],
    *,
    metadata: Sequence[tuple[str, str]] = (),
    timeout: float = 15.0,
    stream_timeout: float = 1.0,
    max_messages: int = 30,
) -> Outcome:
    """One call of `rpc`. Streams are read for at most `max_messages` messages or `stream_timeout`
    seconds; a stream still open then is cancelled and reported with code None."""
    serialize, deserialize = (lambda m: m.SerializeToString()), rpc.output.FromString
    md = list(metadata)
    if not rpc.client_streaming and not rpc.server_streaming:
        try:
            reply = channel.unary_unary(rpc.path, serialize, deserialize)(
                requests[0], metadata=md, timeout=timeout
            )
        except grpc.RpcError as e:
            return Outcome(e.code(), e.details() or "", [])
        return Outcome(grpc.StatusCode.OK, "", [reply])
    if rpc.client_streaming:
        it = channel.stream_stream(rpc.path, serialize, deserialize)(
            iter(list(requests)), metadata=md, timeout=stream_timeout
        )
    else:
        it = channel.unary_stream(rpc.path, serialize, deserialize)(
            requests[0], metadata=md, timeout=stream_timeout
        )
    responses: list[Any] = []
    try:
        for reply in it:
            responses.append(reply)
            if len(responses) >= max_messages:
                it.cancel()
                return Outcome(None, "", responses)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            # Our own read window ended: the stream was accepted and still open.
            return Outcome(None, e.details() or "", responses)
        return Outcome(e.code(), e.details() or "", responses)
    return Outcome(grpc.StatusCode.OK, "", responses)


# -- hypothesis strategies from descriptors --------------------------------------------------------

INT32_EDGES = [0, 1, -1, 2, 49, 50, 51, 100, 999, 1000, 1001, 2**31 - 1, -(2**31)]
INT64_EDGES = [*INT32_EDGES, 2**31, 2**53 + 1, 2**63 - 1, -(2**63)]
UINT32_EDGES = [0, 1, 2**31, 2**32 - 1]
UINT64_EDGES = [*UINT32_EDGES, 2**63, 2**64 - 1]
FLOAT_EDGES = [
    0.0,
    -0.0,
    0.5,
    1.0,
    2.0,
    2.0000001,
    -0.1,
    1e308,
    -1e308,
    float("inf"),
    float("-inf"),
    float("nan"),
]
STRING_EDGES = [
    "",
    " ",
    "a",
    "0",
    "-1",
    "null",
    "*",
    "{}",
    "\x00",
    "\t\n",
    "é",
    "😀" * 40,
    "\u202e\u200b\ufeff",
    "a" * 64,
    "a" * 65,
    "a" * 257,
    "x" * 5000,
    "y" * 200_000,
    "../../etc/passwd",
    "'; DROP TABLE agents; --",
    "%s%n%x",
    "echo:default",
    "echo:*",
    "openai:gpt-4o-mini",
    "nope:model",
    "00000000-0000-0000-0000-000000000000",
    "builtin-assistant",
    "display_name",
]
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
TIMESTAMP_SECONDS = [0, -1, 1, 1_700_000_000, 253402300799, 253402300800, -62135596800, -62135596801, 2**62]
NANOS = [0, 1, 999_999_999, 1_000_000_000, -1]
MAX_DEPTH = 4

JSON = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TEXT, children, max_size=3),
    max_leaves=8,
)


@dataclasses.dataclass
class Pools:
    """Values worth trying beside random ones: ids of real resources, so generated requests also reach
    past the "not found" checks."""

    strings: list[str] = dataclasses.field(default_factory=list)


def _strings(pools: Pools) -> st.SearchStrategy[str]:
    options = [st.sampled_from(STRING_EDGES), TEXT]
    if pools.strings:
        options.append(st.sampled_from(pools.strings))
    return st.one_of(options)


def _field_paths(desc: Descriptor, prefix: str = "", depth: int = 2) -> list[str]:
    paths = []
    for f in desc.fields:
        paths.append(prefix + f.name)
        if f.message_type is not None and depth > 1 and not f.message_type.GetOptions().map_entry:
            paths.extend(_field_paths(f.message_type, prefix + f.name + ".", depth - 1))
    return paths


def _scalar(f: FieldDescriptor, pools: Pools) -> st.SearchStrategy[Any]:
    t = f.type
    if t in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32):
        return st.sampled_from(INT32_EDGES) | st.integers(-(2**31), 2**31 - 1)
    if t in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
        return st.sampled_from(INT64_EDGES) | st.integers(-(2**63), 2**63 - 1)
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return st.sampled_from(UINT32_EDGES) | st.integers(0, 2**32 - 1)
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return st.sampled_from(UINT64_EDGES) | st.integers(0, 2**64 - 1)
    if t == FieldDescriptor.TYPE_DOUBLE:
        return st.sampled_from(FLOAT_EDGES) | st.floats()
    if t == FieldDescriptor.TYPE_FLOAT:
        return st.sampled_from(FLOAT_EDGES[:8]) | st.floats(width=32)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_STRING:
        return _strings(pools)
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in f.enum_type.values]
        # Unknown numbers too: proto3 enums are open, a client may send any int32.
        return st.sampled_from(known) | st.sampled_from([max(known) + 1, 1000, -1, 2**31 - 1])
    raise AssertionError(f"unhandled field type {t} of {f.full_name}")


def _well_known(desc: Descriptor, pools: Pools, paths: list[str]) -> st.SearchStrategy[Any] | None:
    cls = message_factory.GetMessageClass(desc)
    name = desc.full_name
    if name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
        return st.builds(
            lambda s, n: cls(seconds=s, nanos=n),
            st.sampled_from(TIMESTAMP_SECONDS) | st.integers(-(2**40), 2**40),
            st.sampled_from(NANOS) | st.integers(0, 999_999_999),
        )
    if name == "google.protobuf.FieldMask":
        path = st.sampled_from(paths) if paths else TEXT
        return st.builds(lambda p: cls(paths=p), st.lists(path | _strings(pools), max_size=4))

    if name == "google.protobuf.Struct":

        def struct(d: dict[str, Any]) -> Any:
            m = cls()
            m.update(d)
            return m

        return st.builds(struct, st.dictionaries(TEXT, JSON, max_size=4))
    if name == "google.protobuf.Value":

        def value(v: Any) -> Any:
            from google.protobuf import struct_pb2

            holder = struct_pb2.Struct()
            holder.update({"v": v})
            return holder.fields["v"]

        return st.builds(value, JSON)
    if name == "google.protobuf.Any":
        return st.just(cls())
    return None


def message(
    desc: Descriptor, pools: Pools, depth: int = 0, paths: list[str] | None = None
) -> st.SearchStrategy[Any]:
    """Messages of type `desc`, each field present or not, values from the field's type."""
    special = _well_known(desc, pools, paths or [])
    if special is not None:
        return special
    cls = message_factory.GetMessageClass(desc)
    # A FieldMask names fields of its sibling message(s) (Update*Request: the resource).
    mask_paths = [
        p
        for f in desc.fields
        if f.message_type is not None and not f.message_type.full_name.startswith("google.protobuf")
        for p in _field_paths(f.message_type)
    ]

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        msg = cls()
        for f in desc.fields:
            if not draw(st.booleans()):
                continue
            sub = f.message_type
            if sub is not None and sub.GetOptions().map_entry:
                key_f, value_f = sub.fields_by_name["key"], sub.fields_by_name["value"]
                keys = _scalar(key_f, pools)
                if value_f.message_type is not None:
                    if depth >= MAX_DEPTH:
                        continue
                    entries = draw(
                        st.dictionaries(keys, message(value_f.message_type, pools, depth + 1), max_size=3)
                    )
                    for k, v in entries.items():
                        getattr(msg, f.name)[k].CopyFrom(v)
                else:
                    getattr(msg, f.name).update(
                        draw(st.dictionaries(keys, _scalar(value_f, pools), max_size=4))
                    )
            elif sub is not None:
                if depth >= MAX_DEPTH:
                    continue
                element = message(sub, pools, depth + 1, mask_paths)
                if f.is_repeated:
                    getattr(msg, f.name).extend(draw(st.lists(element, max_size=3)))
                else:
                    getattr(msg, f.name).CopyFrom(draw(element))
            elif f.is_repeated:
                getattr(msg, f.name).extend(draw(st.lists(_scalar(f, pools), max_size=4)))
            else:
                setattr(msg, f.name, draw(_scalar(f, pools)))
        return msg

    return build()
