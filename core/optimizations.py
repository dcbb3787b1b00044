"""An optimization as both sides see it: what the API asks a bulk worker to build, and what it reports.

The API chooses the examples (api/optimizations.py: past succeeded jobs with
a correction or a positive score, by filter) and submits one batch of one
item that carries this spec (`core.batches.OPTIMIZATION_KEY`), so it runs
in the bulk lane under the LM's capacity like any bulk work. The worker
(worker/optimization.py) holds out part of the examples, builds a candidate
from the rest, scores candidate and current version on the held-out part,
registers the candidate as a new version without serving it, and ends the
item with the result below.
"""

from typing import Any, Literal

from pydantic import BaseModel, Field

Optimizer = Literal["labeled", "bootstrap", "mipro", "gepa"]
MetricName = Literal["agreement", "program"]
# The output field DSPy's ChainOfThought adds: free text, never judged by the agreement metric.
REASONING = "reasoning"


class TrainingExample(BaseModel):
    job_id: str
    input: dict[str, Any]
    label: dict[str, Any] = Field(description="The output it should have: the job's answer with its corrections.")
    judged: list[str] = Field(
        description="The label's fields feedback vouched for: those corrected, or (a positive score) every field "
        "but `reasoning`."
    )


class OptimizationSpec(BaseModel):
    optimizer: Optimizer
    metric: MetricName
    demos: int
    holdout: float
    budget_calls: int
    seed: int
    current_version: str | None = Field(description="The version to improve on (null: the one as registered).")
    examples: list[TrainingExample]


class Scores(BaseModel):
    candidate: float
    current: float


class OptimizationResult(BaseModel):
    candidate_version: str = Field(
        description="The new version, registered (for a program from MLflow: logged, `models:/<name>/<n>`, under "
        "the `candidate` alias), serving nobody yet."
    )
    current_version: str = Field(description="The version it was built from and compared with.")
    optimizer: Optimizer
    metric: MetricName
    train_jobs: list[str] = Field(description="The jobs it learned from.")
    holdout_jobs: list[str] = Field(description="The jobs both versions were scored on.")
    scores: Scores = Field(description="Mean held-out scores, 0 to 1.")
    lm_calls: int = Field(description="LM calls it made, building and scoring.")
    budget_calls: int
