"""The search use case: text memories, preferences and tool memories for one question.

The question is embedded once (`Query`) and that vector serves all three searches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from memos_ray import metrics
from memos_ray.config import MemosConfig
from memos_ray.domain.memory import MemoryItem
from memos_ray.schemas.product import SearchRequest
from memos_ray.services.inputs import check_query, check_top_k, filters_by_cube, search_types
from memos_ray.services.memory import MemoryService, Query, SearchOptions
from memos_ray.services.preferences import PreferenceService
from memos_ray.stores.preference.base import Preference


@dataclass
class SearchResult:
    text: dict[str, list[MemoryItem]]
    # None when not asked for or not available (no preference store, no tool memories).
    preferences: dict[str, list[Preference]] | None = None
    tools: dict[str, list[MemoryItem]] | None = None


class SearchService:
    def __init__(
        self, config: MemosConfig, memory: MemoryService, preferences: PreferenceService | None
    ) -> None:
        self.config = config
        self.memory = memory
        self.preferences = preferences

    def check(self, req: SearchRequest) -> None:
        """What can be refused before knowing who asks: bounds on sizes."""
        limits = self.config.limits
        check_top_k(
            limits,
            top_k=req.top_k,
            pref_top_k=req.pref_top_k,
            tool_mem_top_k=req.tool_mem_top_k,
            skill_mem_top_k=req.skill_mem_top_k,
        )
        check_query(req.query, limits)

    def search(self, req: SearchRequest, cubes: list[str]) -> SearchResult:
        started, outcome = time.monotonic(), "error"
        try:
            result = self._search(req, cubes)
            outcome = "ok"
            return result
        finally:
            seconds = time.monotonic() - started
            metrics.SEARCH_SECONDS.observe(seconds, mode=req.mode, outcome=outcome)

    def _search(self, req: SearchRequest, cubes: list[str]) -> SearchResult:
        self.check(req)
        types = search_types(req.search_memory_type)
        query = Query(req.query)
        filters = filters_by_cube(req.filter, cubes)
        result = SearchResult({c: [] for c in cubes})
        if types.text is None or types.text:
            options = SearchOptions(
                top_k=req.top_k,
                relativity=req.relativity,
                dedup=req.dedup or "no",
                rerank=req.rerank,
                memory_types=list(types.text) if types.text else None,
                session_id=req.session_id,
                reference_time=req.reference_time,
            )
            result.text = self.memory.search(query, filters, options)
        wants_preferences = types.preferences and (req.include_preference or types.explicit)
        if wants_preferences and req.pref_top_k and self.preferences is not None:
            result.preferences = self.preferences.search(cubes, query, req.pref_top_k)
        tool_types = list(types.tools)
        wants_tools = req.search_tool_memory or (types.explicit and bool(tool_types))
        if not (wants_tools and req.tool_mem_top_k and tool_types):
            return result
        # Cubes with no tool memory skip the second ranking (known from the cached index).
        with_tools = [c for c in cubes if self.memory.has_types(c, tool_types)]
        if with_tools:
            tool_options = SearchOptions(
                top_k=req.tool_mem_top_k,
                relativity=req.relativity,
                dedup="no",
                memory_types=tool_types,
                reference_time=req.reference_time,
            )
            result.tools = self.memory.search(
                query, {c: filters[c] for c in with_tools}, tool_options
            )
        return result
