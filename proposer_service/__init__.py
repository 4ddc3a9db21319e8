"""gRPC service around a proposer (thin: translate and delegate)."""
