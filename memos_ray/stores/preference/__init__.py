"""Preference memory store: explicit and implicit user preferences, hybrid-searched."""

from memos_ray.stores.preference.base import (
    Preference,
    PreferenceKind,
    PreferenceStatus,
    PreferenceStore,
)

__all__ = ["Preference", "PreferenceKind", "PreferenceStatus", "PreferenceStore"]
