"""gRPC service around the target model and acceptance (thin: translate and delegate)."""
