import pytest

from services.platform.settings import Settings, SettingsError


def test_defaults_and_overrides():
    s = Settings.from_env({})
    assert (s.grpc_address, s.http_port, s.otel_exporter, s.embedded) == (
        "127.0.0.1:50051",
        8080,
        "none",
        False,
    )
    assert s.effective_database_url.startswith("sqlite+aiosqlite:///")
    s = Settings.from_env(
        {"AGENTMESH_GRPC_PORT": "6000", "DATABASE_URL": "postgresql+psycopg://x/y"}, grpc_port=7000
    )
    assert s.grpc_port == 7000 and s.effective_database_url == "postgresql+psycopg://x/y"


def test_embedded_defaults_point_peers_at_this_process():
    s = Settings.from_env({"AGENTMESH_GRPC_PORT": "6001"}).embedded_defaults()
    assert s.embedded
    assert {s.peers.identity, s.peers.agents, s.peers.conversation, s.peers.orchestration} == {
        "127.0.0.1:6001"
    }


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AGENTMESH_GRPC_PORT", "fifty"),
        ("AGENTMESH_SHUTDOWN_GRACE_SECONDS", "soon"),
        ("AGENTMESH_OTEL_EXPORTER", "zipkin"),
        ("AGENTMESH_RUN_LEASE_SECONDS", "0"),
        ("AGENTMESH_RUN_SWEEP_SECONDS", "-1"),
        ("AGENTMESH_RUN_EVENT_RETENTION_SECONDS", "an hour"),
    ],
)
def test_malformed_values_name_the_variable(name, value):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_run_timings_reach_orchestration():
    from services.orchestration.config import OrchestrationOptions

    s = Settings.from_env({"AGENTMESH_RUN_LEASE_SECONDS": "30", "AGENTMESH_RUN_SWEEP_SECONDS": "7"})
    options = OrchestrationOptions.from_settings(s.runs)
    assert (options.lease_ttl_seconds, options.lease_renew_seconds, options.sweep_interval_seconds) == (
        30,
        6,
        7,
    )
    assert options.event_retention_seconds == 3600
