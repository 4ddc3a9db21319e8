"""TLS, mutual TLS and a shared-token check, for both services and the client.

Insecure loopback is the default. With --tls-cert/--tls-key a service serves TLS; adding
--tls-client-ca makes it require client certificates signed by that CA (mutual TLS). With
--auth-token (or SPECDEC_AUTH_TOKEN) every call except health checks and reflection must carry
`authorization: Bearer <token>` metadata, else UNAUTHENTICATED.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path

import grpc

AUTH_HEADER = "authorization"
# Probes (compose, Kubernetes) and tooling can't send our token: these stay open.
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


@dataclass(frozen=True)
class ServerSecurity:
    tls_cert: Path | None = None       # PEM certificate chain of the service
    tls_key: Path | None = None        # PEM private key
    tls_client_ca: Path | None = None  # set = mutual TLS: clients need a cert signed by this CA
    auth_token: str | None = None      # secret: never printed

    def credentials(self) -> grpc.ServerCredentials | None:
        if self.tls_cert is None and self.tls_key is None:
            if self.tls_client_ca is not None:
                raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
            return None
        if self.tls_cert is None or self.tls_key is None:
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        ca = self.tls_client_ca.read_bytes() if self.tls_client_ca else None
        return grpc.ssl_server_credentials([(self.tls_key.read_bytes(), self.tls_cert.read_bytes())],
                                           root_certificates=ca, require_client_auth=ca is not None)


@dataclass(frozen=True)
class ClientSecurity:
    tls_ca: Path | None = None    # set = connect with TLS, trusting this CA
    tls_cert: Path | None = None  # client certificate for mutual TLS
    tls_key: Path | None = None
    auth_token: str | None = None

    def channel(self, address: str, options: list[tuple[str, int]]) -> grpc.aio.Channel:
        if self.tls_ca is None:
            if self.tls_cert is not None:
                raise ValueError("a client certificate needs --tls-ca as well")
            return grpc.aio.insecure_channel(address, options=options)
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.tls_ca.read_bytes(),
            private_key=self.tls_key.read_bytes() if self.tls_key else None,
            certificate_chain=self.tls_cert.read_bytes() if self.tls_cert else None)
        return grpc.aio.secure_channel(address, creds, options=options)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((AUTH_HEADER, f"Bearer {self.auth_token}"),) if self.auth_token else ()


def token_matches(metadata, token: str) -> bool:
    for key, value in metadata or ():
        if key == AUTH_HEADER:
            return hmac.compare_digest(value, f"Bearer {token}")  # constant time
    return False
