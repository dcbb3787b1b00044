"""FastAPI dependencies: the process-wide clients, as `Annotated` aliases.

All `async def`, though none awaits anything: FastAPI runs a plain `def`
dependency in its thread pool, a thread hop per dependency per request
(five for `POST /jobs`), which py-spy showed as a tenth of the API's CPU.
"""

from typing import Annotated

import redis.asyncio as aioredis
from fastapi import Depends, Request

from api.event_hub import EventHub
from api.key_slots import KeySlots
from api.waits import Waits
from core.settings import Settings, get_settings


async def _redis(request: Request) -> aioredis.Redis:
    client: aioredis.Redis = request.app.state.redis
    return client


async def _hub(request: Request) -> EventHub:
    hub: EventHub = request.app.state.hub
    return hub


async def _streams(request: Request) -> KeySlots:
    streams: KeySlots = request.app.state.streams
    return streams


async def _waits(request: Request) -> Waits:
    waits: Waits = request.app.state.waits
    return waits


async def _settings() -> Settings:
    return get_settings()


SettingsDep = Annotated[Settings, Depends(_settings)]
RedisDep = Annotated[aioredis.Redis, Depends(_redis)]
HubDep = Annotated[EventHub, Depends(_hub)]
StreamsDep = Annotated[KeySlots, Depends(_streams)]
WaitsDep = Annotated[Waits, Depends(_waits)]
