"""FastAPI dependencies: the process-wide clients, as `Annotated` aliases."""

from typing import Annotated

import redis.asyncio as aioredis
from celery import Celery
from fastapi import Depends, Request

from api.event_hub import EventHub
from api.rate_limit import StreamSlots
from core.settings import Settings, get_settings


def _redis(request: Request) -> aioredis.Redis:
    client: aioredis.Redis = request.app.state.redis
    return client


def _celery(request: Request) -> Celery:
    app: Celery = request.app.state.celery
    return app


def _hub(request: Request) -> EventHub:
    hub: EventHub = request.app.state.hub
    return hub


def _streams(request: Request) -> StreamSlots:
    streams: StreamSlots = request.app.state.streams
    return streams


SettingsDep = Annotated[Settings, Depends(get_settings)]
RedisDep = Annotated[aioredis.Redis, Depends(_redis)]
CeleryDep = Annotated[Celery, Depends(_celery)]
HubDep = Annotated[EventHub, Depends(_hub)]
StreamsDep = Annotated[StreamSlots, Depends(_streams)]
