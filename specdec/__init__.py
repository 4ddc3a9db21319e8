"""Core library of speculative decoding: engines, proposers, acceptance, sessions, metrics.

Nothing in this package knows about gRPC; the services and the client are thin layers over it.
"""
