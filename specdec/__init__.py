"""Core library of speculative decoding: engines, proposers, acceptance, sessions, metrics.

Nothing in this package knows about gRPC; the services and the client are thin layers over it.
Importing it sets no environment variable: the entry points set OpenMP's wait policy before
torch loads (specdec.threads).
"""
