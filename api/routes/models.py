"""`GET /models`: every model jobs may use, its LM capacity limits and what it uses now (core/capacity.py)."""

from fastapi import APIRouter
from pydantic import BaseModel

from api.auth import UNAUTHORIZED, CallerDep
from api.deps import RedisDep, SettingsDep
from api.lm_capacity import ModelCapacity, bulk_waiting, read_capacity

router = APIRouter(tags=["operations"], responses=UNAUTHORIZED)


class ModelsPage(BaseModel):
    models: list[ModelCapacity]


@router.get("/models", response_model=ModelsPage)
async def list_models(redis: RedisDep, settings: SettingsDep, _caller: CallerDep) -> ModelsPage:
    """Every model jobs may use: its endpoint's limits, calls in flight, who waits, whether it is paused."""
    return ModelsPage(models=await read_capacity(redis, settings, await bulk_waiting(redis, settings)))
