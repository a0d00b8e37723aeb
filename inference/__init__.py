"""opslab inference engine: `from inference import LLM, SamplingParams, AsyncLLMEngine`.

Imports are lazy so that `import inference` stays cheap (torch loads only when an engine is built).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["LLM", "SamplingParams", "AsyncLLMEngine", "EngineConfig", "ModelConfig"]

_SOURCES = {"LLM": "inference.llm", "AsyncLLMEngine": "inference.async_engine", "SamplingParams": "inference.config",
            "EngineConfig": "inference.config", "ModelConfig": "inference.config"}

if TYPE_CHECKING:
    from inference.config import EngineConfig, ModelConfig, SamplingParams
    from inference.async_engine import AsyncLLMEngine
    from inference.llm import LLM


def __getattr__(name: str):
    if name not in _SOURCES:
        raise AttributeError(f"module 'inference' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_SOURCES[name]), name)
