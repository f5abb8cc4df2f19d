"""Ed25519 signing keys: the current one signs, previous ones stay published in the JWKS.

A key's `kid` is its RFC 7638 JWK thumbprint, so it is the same on every replica and after a restart
without being configured. Rotation: move the current key file to AGENTMESH_PREVIOUS_SIGNING_KEY_FILES,
put a new one in AGENTMESH_SIGNING_KEY_FILE, restart; verifiers meet the new kid and re-fetch the JWKS
once, and tokens signed with the old key keep verifying until the old key leaves the list.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import os
import pathlib
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from services.platform.settings import Settings, SettingsError

ALGORITHM = "EdDSA"

log = logging.getLogger("agentmesh.identity")


def _thumbprint(jwk: dict[str, Any]) -> str:
    canonical = json.dumps({k: jwk[k] for k in ("crv", "kty", "x")}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).decode().rstrip("=")


@dataclasses.dataclass(frozen=True)
class PublicKey:
    key: Ed25519PublicKey
    kid: str

    @classmethod
    def of(cls, key: Ed25519PublicKey) -> PublicKey:
        return cls(key, _thumbprint(jwt.algorithms.OKPAlgorithm.to_jwk(key, as_dict=True)))

    def jwk(self) -> dict[str, str]:
        jwk = jwt.algorithms.OKPAlgorithm.to_jwk(self.key, as_dict=True)
        return {
            "kty": jwk["kty"],
            "crv": jwk["crv"],
            "x": jwk["x"],
            "kid": self.kid,
            "alg": ALGORITHM,
            "use": "sig",
        }


class KeySet:
    """The signing key plus the public keys still accepted (the signing key's own first)."""

    def __init__(self, signing_key: Ed25519PrivateKey, previous: list[Ed25519PublicKey] | None = None):
        self.signing_key = signing_key
        self.current = PublicKey.of(signing_key.public_key())
        published = [self.current]
        for key in previous or []:
            public = PublicKey.of(key)
            if public.kid not in {p.kid for p in published}:
                published.append(public)
        self.published = published

    @property
    def kid(self) -> str:
        return self.current.kid

    def jwks(self) -> dict[str, Any]:
        return {"keys": [p.jwk() for p in self.published]}

    def sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self.signing_key, algorithm=ALGORITHM, headers={"kid": self.kid})

    @classmethod
    def load(cls, signing_key_file: str, previous_files: tuple[str, ...] = ()) -> KeySet:
        signing = _load_private(signing_key_file)
        return cls(signing, [_load_public(path) for path in previous_files])


def _read(path: str) -> bytes:
    try:
        return pathlib.Path(path).read_bytes()
    except OSError as exc:
        raise SettingsError(f"cannot read signing key file {path}: {exc.strerror}") from None


def _load_private(path: str) -> Ed25519PrivateKey:
    data = _read(path)  # outside the try: SettingsError is itself a ValueError
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError:
        raise SettingsError(f"{path} is not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SettingsError(f"{path} is not an Ed25519 private key (identity signs with EdDSA)")
    return key


def _load_public(path: str) -> Ed25519PublicKey:
    """A previous key file may hold the old private key or only its public half."""
    data = _read(path)
    try:
        private = serialization.load_pem_private_key(data, password=None)
        key: object = private.public_key()
    except ValueError:
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError:
            raise SettingsError(f"{path} is not a PEM key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SettingsError(f"{path} is not an Ed25519 key")
    return key


def private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def ensure_key_file(path: str) -> bool:
    """Creates an Ed25519 key at `path` (mode 0600) unless one is there; True when it made one."""
    target = pathlib.Path(path)
    if target.exists():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: two processes starting at once must not each write a different key.
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem(Ed25519PrivateKey.generate()))
    return True


def signing_key_file(settings: Settings) -> str:
    """The signing key file to load. Embedded: the data dir's, generated on first start. Elsewhere,
    refuses to start without the key or the service secret (IssueServiceToken's credential)."""
    auth = settings.auth
    if settings.embedded:
        path = auth.signing_key_file or str(pathlib.Path(settings.data_dir) / "signing_key.pem")
        if ensure_key_file(path):
            log.info("generated a signing key", extra={"fields": {"path": path}})
        return path
    if not auth.signing_key_file:
        raise SettingsError(
            "AGENTMESH_SIGNING_KEY_FILE is required: identity will not start without an Ed25519 "
            "signing key (PEM) outside the embedded mode"
        )
    if not auth.service_secret:
        raise SettingsError(
            "AGENTMESH_SERVICE_SECRET is required: identity will not start without the shared service "
            "secret outside the embedded mode"
        )
    return auth.signing_key_file
