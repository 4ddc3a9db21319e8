# One image for both services (the command picks which). Models shipped in models/ are the default.
#   docker compose up --build
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 OMP_WAIT_POLICY=PASSIVE
WORKDIR /app

# torch first and pinned: a bare torch requirement would pull whatever build the index serves.
# For a CPU-only image pass --build-arg TORCH_INDEX=<an index of CPU wheels>.
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX=""
RUN if [ -n "$TORCH_INDEX" ]; then pip install "$TORCH_SPEC" --index-url "$TORCH_INDEX"; \
    else pip install "$TORCH_SPEC"; fi

COPY pyproject.toml README.md ./
COPY specdec ./specdec
COPY specdec_rpc ./specdec_rpc
COPY proposer_service ./proposer_service
COPY verifier_service ./verifier_service
COPY client ./client
COPY bench ./bench
RUN pip install .
COPY models ./models

RUN useradd --uid 1000 --create-home specdec \
    && mkdir -p /cache/compiled /cache/qpc && chown -R specdec /cache
# (a named volume mounted there starts with these owners: docker-compose.yml's compile caches)
USER specdec
# Ports: verifier 50051, proposer 50052; Prometheus 9100 (verifier), 9101 (proposer).
EXPOSE 50051 50052 9100 9101
CMD ["python", "-m", "verifier_service"]
