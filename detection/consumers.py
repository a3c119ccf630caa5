"""ws/jobs/{id}/: the job's current state on connect, then every change."""

from __future__ import annotations

from typing import Any

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from detection import selectors
from detection.models import Job

CLOSE_UNAUTHENTICATED = 4403
CLOSE_NOT_FOUND = 4404


@database_sync_to_async
def _payload_for(user: Any, job_id: str) -> dict | None:
    try:
        return selectors.job_payload(selectors.job_of(user, job_id))
    except Job.DoesNotExist:
        return None


class JobConsumer(AsyncJsonWebsocketConsumer):
    async def dispatch(self, message: dict) -> None:
        # Channels' own dispatch first hands every message to a thread to close stale
        # database connections: a thread hop for each of a job's updates, which touch no
        # database. This consumer's one read (_payload_for) is database_sync_to_async,
        # which closes them itself, before and after, on the thread it runs on.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def connect(self) -> None:
        user = self.scope.get("user")
        # Accept first: a close before accept is a bare handshake refusal, without the code
        # that tells the client why.
        await self.accept()
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.job_id = str(self.scope["url_route"]["kwargs"]["job_id"])
        self.group = selectors.job_group(self.job_id)
        # Join before reading the row, so no change falls between the two.
        await self.channel_layer.group_add(self.group, self.channel_name)
        payload = await _payload_for(user, self.job_id)
        if payload is None:
            await self.channel_layer.group_discard(self.group, self.channel_name)
            await self.close(code=CLOSE_NOT_FOUND)
            return
        await self.send_json({"type": "job", "job": payload})

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        # The socket only speaks; anything a client sends is ignored.
        return None

    async def job_update(self, event: dict) -> None:
        await self.send_json({"type": "job", "job": event["job"]})

    async def job_deleted(self, event: dict) -> None:
        await self.send_json({"type": "deleted", "job": None})
        await self.close()
