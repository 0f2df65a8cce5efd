"""What a request handler needs, built once per process by the serving shell."""

from __future__ import annotations

from dataclasses import dataclass, field

from memos_ray.config import MemosConfig
from memos_ray.runtime.compose import Services
from memos_ray.scheduler.actor import SchedulerClient
from memos_ray.services.add import AddService
from memos_ray.services.chat import ChatService
from memos_ray.services.fine import FineService
from memos_ray.services.memory import MemoryService
from memos_ray.services.preferences import PreferenceService
from memos_ray.services.search import SearchService
from memos_ray.services.tenancy import AccessControl


@dataclass
class ApiContext:
    config: MemosConfig
    # Over every embedding space in the served app: each cube's calls go to its space.
    service: MemoryService
    access: AccessControl
    version: str
    # None when no chat model is configured (llm.backend "none").
    chat: ChatService | None = None
    # Fine mode (LLM extraction); None without a chat model: fine adds run in fast mode.
    fine: FineService | None = None
    # Preference memory (Milvus); None when switched off.
    preferences: PreferenceService | None = None
    # Per-cube scheduler actors (inside Ray); None runs async work inline.
    scheduler: SchedulerClient | None = None
    # The use cases the product routes call, over the services above.
    adder: AddService = field(init=False)
    searcher: SearchService = field(init=False)

    def __post_init__(self) -> None:
        self.adder = AddService(self.config, self.service, self.fine, self.scheduler)
        self.searcher = SearchService(self.config, self.service, self.preferences)

    @classmethod
    def of(
        cls, services: Services, version: str, scheduler: SchedulerClient | None = None
    ) -> ApiContext:
        """The context over what `runtime.compose.build_services` built."""
        return cls(
            services.config,
            services.memory,
            services.access,
            version,
            chat=services.chat,
            fine=services.fine,
            preferences=services.preferences,
            scheduler=scheduler,
        )
