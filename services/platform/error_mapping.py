"""The middleware that turns what a handler raised into the call's status: domain errors with their
details, an unreachable database or Redis as UNAVAILABLE, anything else as a bare INTERNAL."""

from __future__ import annotations

import contextlib
import logging
import traceback
from collections.abc import AsyncIterator

import grpc
import psycopg
import redis.exceptions
import sqlalchemy.exc

from services.platform import errors
from services.platform.call_context import CallInfo

log = logging.getLogger("agentmesh.rpc")

# Errors that mean "PostgreSQL or Redis is unreachable right now", as opposed to a bug.
DEPENDENCY_ERRORS: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    # psycopg's own, for the few hot paths that use the pooled driver connection directly.
    psycopg.OperationalError,
    psycopg.InterfaceError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    # A Redis Cluster with a slot unserved past the client's retries (a master down, no replica).
    redis.exceptions.ClusterDownError,
    redis.exceptions.SlotNotCoveredError,
    ConnectionError,
    TimeoutError,
)


def unavailable(exc: BaseException) -> errors.Unavailable:
    """What a dependency error (one of DEPENDENCY_ERRORS) tells a caller, or a run's record: the
    dependency named in words, never a Python class name. Raised only once redis-py's retry
    (AGENTMESH_REDIS_RETRY_SECONDS) or the database pool gave up, so the outage outlasted them."""
    if isinstance(exc, redis.exceptions.RedisError | redis.exceptions.RedisClusterException):
        what = "Redis"
    elif isinstance(exc, sqlalchemy.exc.SQLAlchemyError | psycopg.Error):
        what = "the database"
    else:
        what = "a dependency"
    return errors.Unavailable(f"{what} is unreachable; retry shortly")


class ErrorMapping:
    """Domain errors become their status with details; anything else becomes a bare INTERNAL."""

    @contextlib.asynccontextmanager
    async def around(self, call: CallInfo) -> AsyncIterator[None]:
        try:
            yield
        except errors.AgentmeshError as exc:
            await call.context.abort_with_status(errors.to_status(exc))
        except (grpc.aio.AbortError, GeneratorExit):
            raise
        except DEPENDENCY_ERRORS as exc:
            # A database or Redis that cannot be reached is retryable, never INTERNAL.
            log.warning(
                "dependency unavailable",
                extra={"fields": {"method": call.method, "error": f"{type(exc).__name__}: {exc}"}},
            )
            await call.context.abort_with_status(errors.to_status(unavailable(exc)))
        except NotImplementedError:
            await call.context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{call.method} is not implemented")
        except Exception:
            log.error(
                "unexpected error",
                extra={"fields": {"method": call.method, "error": traceback.format_exc()}},
            )
            await call.context.abort_with_status(
                errors.to_status(
                    errors.Internal(
                        f"internal error (request id {call.request_id})",
                        metadata={"request_id": call.request_id},
                    )
                )
            )
