"""Importing QEfficient where it is installed from source on a CPU-only machine (used by
scripts/export_qeff_graphs.py and the QEfficient comparison in tests/test_qaic.py).

QEfficient imports qwen_vl_utils at import time (for its Qwen-VL models), and qwen_vl_utils
imports torchvision. PyPI's torchvision wheel is a CUDA build that fails to load beside the CPU
torch; the CPU one comes from PyTorch's own index. Where torchvision is absent, a stand-in
qwen_vl_utils is registered whose functions raise: the llama-family models exported here never
call them, and a Qwen-VL model would fail loudly rather than silently.
"""

from __future__ import annotations

import importlib.util
import sys
import types


def qefficient_installed() -> bool:
    return importlib.util.find_spec("QEfficient") is not None


def import_qefficient():
    if importlib.util.find_spec("torchvision") is None and "qwen_vl_utils" not in sys.modules:
        def unavailable(*_a, **_k):
            raise RuntimeError("qwen_vl_utils needs torchvision, which is not installed")

        stand_in = types.ModuleType("qwen_vl_utils")
        stand_in.smart_resize = stand_in.process_vision_info = unavailable
        sys.modules["qwen_vl_utils"] = stand_in
    import QEfficient

    return QEfficient
