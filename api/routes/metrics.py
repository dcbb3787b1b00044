"""`GET /metrics`: Prometheus metrics of the API, the workers and the queues (see api/metrics.py)."""

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from api.auth import UNAUTHORIZED, AdminDep
from api.deps import RedisDep, SettingsDep
from api.metrics import SnapshotCollector, process_metrics, read_snapshot

router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}, "description": "Prometheus text format."},
        **UNAUTHORIZED,
        403: {"description": "Not an operator's key (API_ADMIN_KEYS)."},
    },
)
async def metrics(redis: RedisDep, settings: SettingsDep, _admin: AdminDep) -> Response:
    """Prometheus metrics of the API, the workers and the queues. With API keys configured, an operator's key
    (API_ADMIN_KEYS) only: they name every key and what it does."""
    snapshot = await read_snapshot(redis, settings)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    return Response(process_metrics(settings) + generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
