"""Core library of speculative decoding: engines, proposers, acceptance, sessions, metrics. It
knows nothing of gRPC, and importing it sets no environment variable (specdec.threads).
"""
