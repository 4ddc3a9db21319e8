"""The gRPC layer shared by the services and the client: generated stubs (v1/), the one
error-to-status mapping, protobuf <-> domain conversions, and the server scaffolding."""
