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


def test_each_group_reads_its_variables_and_keeps_the_rest_default():
    s = Settings.from_env(
        {
            "AGENTMESH_JWT_AUDIENCE": "mesh",
            "AGENTMESH_PREVIOUS_SIGNING_KEY_FILES": "a.pem,,b.pem",
            "AGENTMESH_SIGNUP": "open",
            "AGENTMESH_PEER_DEADLINE_SECONDS": "2.5",
            "AGENTMESH_CORS_ORIGINS": "http://a,http://b",
            "AGENTMESH_ECHO_DELAY_MS": "0",
            "AGENTMESH_LOG_LEVEL": "debug",
            "AGENTMESH_TLS_CA_FILE": "ca.pem",
        }
    )
    assert (s.auth.audience, s.auth.issuer) == ("mesh", "agentmesh")
    assert s.auth.previous_signing_key_files == ("a.pem", "b.pem")
    assert s.auth.signup_open is True and Settings.from_env({}).auth.signup_open is None
    assert s.peers.deadline_seconds == 2.5 and s.peers.identity == ""
    assert s.gateway.cors_origins == ("http://a", "http://b") and s.gateway.max_body_bytes == 1024 * 1024
    assert s.providers.echo_delay_ms == 0 and Settings.from_env({}).providers.echo_delay_ms is None
    assert s.log_level == "DEBUG" and s.tls.ca_file == "ca.pem" and not s.tls.mutual


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("AGENTMESH_SIGNUP", "maybe", "AGENTMESH_SIGNUP must be open or closed, got 'maybe'"),
        (
            "AGENTMESH_OTEL_EXPORTER",
            "zipkin",
            "AGENTMESH_OTEL_EXPORTER must be none, console, otlp or file, got 'zipkin'",
        ),
        ("AGENTMESH_SESSION_MAX_SECONDS", "0", "AGENTMESH_SESSION_MAX_SECONDS must be positive, got '0'"),
        (
            "AGENTMESH_WS_HEARTBEAT_SECONDS",
            "often",
            "AGENTMESH_WS_HEARTBEAT_SECONDS must be a number, got 'often'",
        ),
    ],
)
def test_error_messages_are_kept(name, value, message):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({name: value})
    assert str(caught.value) == message


def test_an_exporter_writing_to_a_file_needs_the_file():
    with pytest.raises(SettingsError, match="AGENTMESH_OTEL_FILE"):
        Settings.from_env({"AGENTMESH_OTEL_EXPORTER": "file"})


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
