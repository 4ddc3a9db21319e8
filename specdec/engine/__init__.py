"""The engine contract and its executors."""

from specdec.engine.contract import Engine, HeadsOnDemand

__all__ = ["Engine", "HeadsOnDemand"]
