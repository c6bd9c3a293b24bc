"""The single-Redis feed: one ``ShardSubscription`` (``SUBSCRIBE``) carries every followed session of the process.

Its connection is reconnected by us, never silently: see ``subscription``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sse_progress.engines.base import Feed, MessageHandler, ResyncHandler
from sse_progress.engines.redis.subscription import ShardSubscription, client_without_retries

if TYPE_CHECKING:
    from sse_progress.engines.redis.scripts import RedisKeys


class RedisFeed(Feed):
    def __init__(
        self,
        url: str,
        options: dict[str, Any],
        keys: RedisKeys,
        on_message: MessageHandler,
        on_resync: ResyncHandler,
    ) -> None:
        self.on_message = on_message
        self.on_resync = on_resync
        self._subscription = ShardSubscription(self, client_without_retries(url, options), keys, sharded=False)

    @property
    def problem(self) -> str | None:
        return self._subscription.problem

    def problem_for(self, session_id: str) -> str | None:
        return self._subscription.problem_for(session_id)

    async def add(self, session_id: str) -> None:
        await self._subscription.subscribe(session_id)

    async def remove(self, session_id: str) -> None:
        await self._subscription.unsubscribe(session_id)

    async def close(self) -> None:
        await self._subscription.close()

    async def lost(self, subscription: ShardSubscription) -> bool:
        return False  # the one connection there is: always try again
