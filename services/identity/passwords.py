"""Password hashing (argon2id) and the policy for new passwords.

Parameters: argon2id, m=19456 KiB (19 MiB), t=3, p=1: OWASP's minimum profile (m=19 MiB, t=2, p=1)
with one more pass, about 28 ms per hash on the reference machine. They are recorded in every hash
(`$argon2id$v=19$m=19456,t=3,p=1$...`), so raising them later rehashes each user at their next login.
"""

from __future__ import annotations

import asyncio
import dataclasses

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from services.identity.common_passwords import COMMON_PASSWORDS
from services.platform import errors

MIN_LENGTH = 8
MAX_LENGTH = 256


@dataclasses.dataclass(frozen=True, kw_only=True)
class Argon2Parameters:
    time_cost: int = 3
    memory_cost_kib: int = 19456
    parallelism: int = 1


@dataclasses.dataclass(frozen=True)
class Verification:
    ok: bool
    # The hash was made with other parameters than today's: store a fresh one.
    needs_rehash: bool = False


class Passwords:
    """argon2id hashing run off the event loop (argon2-cffi releases the GIL while it works)."""

    def __init__(self, parameters: Argon2Parameters | None = None):
        p = parameters or Argon2Parameters()
        self.parameters = p
        self._hasher = argon2.PasswordHasher(
            time_cost=p.time_cost,
            memory_cost=p.memory_cost_kib,
            parallelism=p.parallelism,
            type=argon2.Type.ID,
        )
        # Verified against when there is no user, so a miss costs what a hit costs.
        self._dummy_hash = self._hasher.hash("agentmesh dummy password")

    def hash_sync(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify_sync(self, stored_hash: str | None, password: str) -> Verification:
        try:
            self._hasher.verify(stored_hash or self._dummy_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return Verification(False)
        if stored_hash is None:
            return Verification(False)
        return Verification(True, self._hasher.check_needs_rehash(stored_hash))

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self.hash_sync, password)

    async def verify(self, stored_hash: str | None, password: str) -> Verification:
        """Verifies `password`; with `stored_hash` None it burns the same time and answers False."""
        return await asyncio.to_thread(self.verify_sync, stored_hash, password)


def check_policy(password: str, *, field: str = "password") -> None:
    """The policy for new passwords: 8 to 256 characters, not one repeated character, not common."""
    problem = None
    if len(password) < MIN_LENGTH:
        problem = f"must be at least {MIN_LENGTH} characters"
    elif len(password) > MAX_LENGTH:
        problem = f"must be at most {MAX_LENGTH} characters"
    elif len(set(password)) == 1:
        problem = "must not be one character repeated"
    elif password.lower() in COMMON_PASSWORDS:
        problem = "is too common; choose another"
    if problem:
        raise errors.InvalidArgument.field(field, problem)
