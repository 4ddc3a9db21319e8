"""gRPC service around the target model and acceptance (thin: translate and delegate)."""

# An entry point's package: set OpenMP's wait policy before anything here loads torch
# (OpenMP reads it once; see specdec.threads).
from specdec.threads import prefer_passive_omp

prefer_passive_omp()
