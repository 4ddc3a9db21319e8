"""python -m verifier_service --model PATH [flags]   (flags also as SPECDEC_* variables)"""

from __future__ import annotations

import logging

from specdec.build import build_verifier
from specdec.stopping import StopParams
from specdec.verifier import TargetVerifier
from specdec_rpc.convert import model_info
from specdec_rpc.metrics import ServiceMetrics
from specdec_rpc.server import Lifecycle, run_service, serve, setup_logging
from specdec_rpc.service_cli import describe
from specdec_rpc.sessions import session_runner
from specdec_rpc.v1 import specdec_pb2 as pb
from specdec_rpc.v1 import specdec_pb2_grpc as pb_grpc
from verifier_service.config import VerifierServiceConfig, from_args
from verifier_service.servicer import VerifierServicer

log = logging.getLogger("verifier_service")
SERVICE = pb.DESCRIPTOR.services_by_name["Verifier"].full_name


def warm_up(verifier: TargetVerifier) -> None:
    """One prefill and one verify window, so the first client does not pay lazy init."""
    session = verifier.open_session()
    try:
        verifier.prefill(session, 0, [0], StopParams(), "")
        verifier.verify(session, [0] * min(verifier.max_k, verifier.engine.ctx_len - 2))
    finally:
        verifier.close_session(session)


async def run(cfg: VerifierServiceConfig) -> None:
    lifecycle, metrics = Lifecycle(SERVICE), ServiceMetrics()
    runner = session_runner(cfg.engine.full_batch_size, cfg.admission, cfg.sessions, lifecycle,
                            metrics.observe_verifier_step)
    servicer = VerifierServicer(runner)
    loaded: list[TargetVerifier] = []

    def load() -> None:
        verifier = build_verifier(cfg.engine, cfg.window_sizes, cfg.executor, cfg.batching,
                                  cfg.admission, cfg.qaic)
        warm_up(verifier)
        servicer.attach(verifier, model_info(verifier.engine, cfg.engine, verifier.fingerprint,
                                             verifier.max_k, cfg.speculative_model_type, cfg.executor))
        metrics.track_pool(lambda: verifier.pool.in_use, lambda: verifier.pool.waiting)
        loaded.append(verifier)

    await serve(cfg.server, "verifier", SERVICE, lifecycle, metrics,
                lambda s: pb_grpc.add_VerifierServicer_to_server(servicer, s), load,
                lambda: loaded[0].batcher.close())


def main(argv: list[str] | None = None) -> None:
    cfg = from_args(argv)
    setup_logging(cfg.log_level)
    log.info("config: %s", describe(cfg))
    run_service(lambda: run(cfg))


if __name__ == "__main__":
    main()
