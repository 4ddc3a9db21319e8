"""Health-check CLI for compose and Kubernetes probes: exit 0 when SERVING, 1 otherwise.

    python -m specdec_rpc.healthcheck 127.0.0.1:50051 [--service specdec.v1.Verifier]
        [--tls-ca ca.pem [--tls-cert client.pem --tls-key client.key]]

Under mutual TLS the probe presents a client certificate (--tls-cert/--tls-key), else the
handshake fails and a healthy service would look down.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(address: str, service: str = "", timeout_s: float = 3.0, tls_ca: Path | None = None,
          tls_cert: Path | None = None, tls_key: Path | None = None) -> str:
    """The health status name (SERVING, NOT_SERVING, ...) or the RPC error code name."""
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    if tls_cert is not None and tls_ca is None:
        raise ValueError("a client certificate needs --tls-ca as well")
    channel = (grpc.secure_channel(address, grpc.ssl_channel_credentials(
                   tls_ca.read_bytes(), tls_key.read_bytes() if tls_key else None,
                   tls_cert.read_bytes() if tls_cert else None))
               if tls_ca else grpc.insecure_channel(address))
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="specdec_rpc.healthcheck", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("address", help="host:port of a verifier or proposer service")
    p.add_argument("--service", default="", help="service name; empty = the whole server")
    p.add_argument("--timeout", type=float, default=3.0)
    p.add_argument("--tls-ca", type=Path, default=None, help="PEM CA for a TLS service")
    p.add_argument("--tls-cert", type=Path, default=None,
                   help="PEM client certificate, for a service that requires one (mutual TLS)")
    p.add_argument("--tls-key", type=Path, default=None, help="PEM private key for --tls-cert")
    args = p.parse_args(argv)
    try:
        status = check(args.address, args.service, args.timeout, args.tls_ca, args.tls_cert,
                       args.tls_key)
    except (ValueError, OSError) as exc:
        p.error(str(exc))
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
