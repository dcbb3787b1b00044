"""Moving an MLflow alias when a program from MLflow is promoted or rolled back.

The API imports no mlflow (its image has none): the one call it makes is
MLflow's REST endpoint that sets a registered model's alias
(`POST /api/2.0/mlflow/registered-models/alias`), with httpx, bounded by
MLFLOW_TIMEOUT_S. Promoting a candidate of a program served by an alias
(`models:/qa-mlflow@production`) moves that alias to the candidate's
version, so everything that reads the alias (other services, the workers at
their next refresh) agrees with the rollout; rolling the promotion back
moves it back.
"""

import httpx
from fastapi import HTTPException

from core.mlflow_uris import UriKind, parse_mlflow_uri, version_number
from core.redact import without_credentials
from core.settings import Settings


def moved_alias(program_uri: str, version: str | None) -> tuple[str, str, str] | None:
    """(registered model, alias, version number) to set when `version` becomes a program's stable version, or
    None when there is no alias to move (a pinned URI, a run's model, the version as registered)."""
    uri = parse_mlflow_uri(program_uri)
    number = version_number(version) if version is not None else None
    if uri.kind is not UriKind.alias or number is None or uri.model_name is None or uri.alias is None:
        return None
    if version != f"models:/{uri.model_name}/{number}":
        return None
    return uri.model_name, uri.alias, str(number)


async def move(settings: Settings, model: str, alias: str, number: str) -> None:
    """Set the alias; 502 naming what MLflow said when it will not."""
    if settings.mlflow_tracking_uri is None:
        raise HTTPException(503, "MLFLOW_TRACKING_URI is not set: the alias cannot be moved")
    url = f"{settings.mlflow_tracking_uri.rstrip('/')}/api/2.0/mlflow/registered-models/alias"
    try:
        async with httpx.AsyncClient(timeout=settings.mlflow_timeout_s) as client:
            answer = await client.post(url, json={"name": model, "alias": alias, "version": number})
    except httpx.HTTPError as e:
        raise HTTPException(502, f"could not move @{alias} of {model}: {without_credentials(str(e))}") from e
    if answer.status_code != 200:
        raise HTTPException(502, f"MLflow would not move @{alias} of {model} to {number}: {answer.text[:300]}")
