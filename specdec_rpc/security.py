"""TLS, mutual TLS and a shared-token check, for both services and the client.

Insecure loopback is the default. With --tls-cert/--tls-key a service serves TLS; adding
--tls-client-ca makes it require client certificates signed by that CA (mutual TLS). With
--auth-token (or SPECDEC_AUTH_TOKEN) every call except health checks and reflection must carry
`authorization: Bearer <token>` metadata, else UNAUTHENTICATED.
"""

from __future__ import annotations

import hmac
import socket
from dataclasses import dataclass
from pathlib import Path

import grpc

from specdec.flags import flag

AUTH_HEADER = "authorization"
# Probes (compose, Kubernetes) and tooling can't send our token: these stay open.
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


@dataclass(frozen=True)
class ServerSecurity:
    tls_cert: Path | None = flag(None, shown="off", help="PEM certificate chain: serve TLS")
    tls_key: Path | None = flag(None, shown="off", help="PEM private key of --tls-cert")
    tls_client_ca: Path | None = flag(
        None, shown="off", help="PEM CA: require client certificates signed by it (mutual TLS)")
    auth_token: str | None = flag(
        None, secret=True, shown="off",
        help="require `authorization: Bearer <token>` metadata (the scheme in any case, RFC "
             "7235); prefer SPECDEC_AUTH_TOKEN: command lines are visible to other users")

    def as_client(self) -> ClientSecurity:
        """How this service calls another of its deployment (the verifier its --proposer): with
        mutual TLS, over TLS with its own certificate, trusting the CA it trusts its clients by
        (one CA per deployment); always with its token. Without a client CA there is no CA to
        verify the other service by, so the call is plaintext, as the flag's help says."""
        if self.tls_client_ca is not None:
            return ClientSecurity(self.tls_client_ca, self.tls_cert, self.tls_key, self.auth_token)
        return ClientSecurity(auth_token=self.auth_token)

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
    tls_ca: Path | None = flag(None, shown="off", help="PEM CA: connect with TLS, trusting it")
    tls_cert: Path | None = flag(None, shown="off", help="PEM client certificate (mutual TLS)")
    tls_key: Path | None = flag(None, shown="off", help="PEM key of --tls-cert")
    auth_token: str | None = flag(None, secret=True, shown="$SPECDEC_AUTH_TOKEN",
                                  help="shared token sent as `authorization: Bearer`")

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
    """`authorization: Bearer <token>`; the scheme name is case-insensitive (RFC 7235)."""
    for key, value in metadata or ():
        if key == AUTH_HEADER:
            scheme, _, given = str(value).partition(" ")
            ok_scheme = scheme.lower() == "bearer"
            # Compare the token in constant time whatever the scheme, then require both.
            return hmac.compare_digest(given.encode(), token.encode()) and ok_scheme
    return False


# The client preface of HTTP/2 in cleartext (what an insecure gRPC channel sends first) and an
# empty SETTINGS frame; a cleartext gRPC server answers with its own SETTINGS frame.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_TLS_ALERT = 0x15  # TLS record type of an alert, what a TLS server answers to cleartext


def speaks_tls(address: str, timeout_s: float = 2.0) -> bool:
    """Whether the service at host:port answers a cleartext HTTP/2 preface as TLS does (an
    alert, or closing without a frame). False when it answers HTTP/2 or can't be reached (a
    service still starting is not a TLS one). Lets a plaintext client fail at once with a
    message naming TLS, instead of grpc's "Socket closed" or a wait until its deadline."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout_s) as sock:
            sock.sendall(_H2_PREFACE)
            first = sock.recv(16)
    except (OSError, ValueError):
        return False
    # An HTTP/2 frame starts with a 3-byte length and type 4 (SETTINGS); a TLS alert record with
    # 0x15 0x03; a TLS server may also just close (b"").
    if len(first) >= 4 and first[3] == 0x04:
        return False
    return not first or first[0] == _TLS_ALERT
