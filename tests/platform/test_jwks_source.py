"""A service verifying a token while identity is unreachable answers UNAVAILABLE, never INTERNAL."""

from __future__ import annotations

import dataclasses

import pytest

from services.platform import errors
from services.platform.runtime import Runtime
from services.platform.settings import Settings
from tests.helpers import free_port


async def test_jwks_from_unreachable_identity_is_unavailable(settings: Settings) -> None:
    peers = dataclasses.replace(settings.peers, identity=f"127.0.0.1:{free_port()}")
    runtime = await Runtime.create(dataclasses.replace(settings, peers=peers))
    try:
        with pytest.raises(errors.Unavailable):
            await runtime.jwks_source()
    finally:
        await runtime.close()
