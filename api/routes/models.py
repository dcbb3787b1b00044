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
async def list_models(redis: RedisDep, settings: SettingsDep, caller: CallerDep) -> ModelsPage:
    """Every model jobs may use: its endpoint's limits, calls in flight, who waits, whether it is paused.
    With API keys configured, only an operator's key (API_ADMIN_KEYS) sees each endpoint's `api_base`."""
    models = await read_capacity(redis, settings, await bulk_waiting(redis, settings))
    if not caller.admin:
        models = [model.model_copy(update={"api_base": None}) for model in models]
    return ModelsPage(models=models)
