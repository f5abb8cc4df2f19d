import pytest
from google.protobuf import timestamp_pb2

from agentmesh.conversation.v1 import conversation_service_pb2 as pb
from services.platform import errors
from services.platform.timestamps import MAX_TIMESTAMP_SECONDS, from_timestamp, micros, to_timestamp


def test_micros_is_exact_and_round_trips_through_a_timestamp():
    assert micros(lambda: 1_700_000_000.123456) == 1_700_000_000_123_456
    ts = to_timestamp(1_700_000_000_123_456)
    assert ts is not None and (ts.seconds, ts.nanos) == (1_700_000_000, 123_456_000)
    request = pb.ListConversationsRequest(start_time=ts)
    assert from_timestamp(request, "start_time") == 1_700_000_000_123_456


def test_zero_is_unset_both_ways():
    assert to_timestamp(0) is None
    assert from_timestamp(pb.ListConversationsRequest(), "start_time") == 0


@pytest.mark.parametrize(
    ("seconds", "nanos", "description"),
    [
        (-1, 0, "must not be before 1970"),
        (0, -1, "must not be before 1970"),
        (MAX_TIMESTAMP_SECONDS + 1, 0, "is not a valid timestamp"),
        (1, 1_000_000_000, "is not a valid timestamp"),
    ],
)
def test_out_of_range_times_are_invalid_argument(seconds: int, nanos: int, description: str):
    request = pb.ListConversationsRequest(end_time=timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos))
    with pytest.raises(errors.InvalidArgument) as caught:
        from_timestamp(request, "end_time")
    assert (caught.value.violations[0].field, caught.value.violations[0].description) == (
        "end_time",
        description,
    )
