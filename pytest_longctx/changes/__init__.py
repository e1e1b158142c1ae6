"""Long-context changes under test, one module per kind behind the Change protocol, and their registry."""

from __future__ import annotations

from .base import CachePlan, Change, ChangeError, LoadPlan, PromptPlan
from .registry import register, registered, unregister

__all__ = ["CachePlan", "Change", "ChangeError", "LoadPlan", "PromptPlan", "register", "registered", "unregister"]
