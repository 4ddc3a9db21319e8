"""The engine contract and its executors."""

from specdec.engine.contract import Engine

__all__ = ["Engine"]
