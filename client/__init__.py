"""The thin client: drives generation round by round over gRPC and assembles the text."""

from client.api import SpecDecClient

__all__ = ["SpecDecClient"]
