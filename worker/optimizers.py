"""Building a candidate module with one of DSPy's optimizers, and the metrics it is judged by.

Runs in a thread of its own (DSPy's optimizers are blocking code), inside
the optimization job's `dspy.context` and call scope (worker/optimization.py):
every LM call they make holds a bulk slot of the model's capacity
(worker/lm_gate.py) and counts against the job's budget. Everything runs on
that one thread (`num_threads=1`): DSPy's parallel executor would start
threads that do not carry the job's call scope.

- `labeled`: the first `demos` training examples as the few-shot demos of
  every predictor (DSPy's LabeledFewShot, as `python -m program.optimize`
  builds the shipped artifacts): what a small base model needs, no LM call.
- `bootstrap`: DSPy's BootstrapFewShot: the current version answers the
  training examples; answers the metric judges fully right become demos,
  with labelled ones besides.
- `mipro`: DSPy's MIPROv2 without its presets: a few instruction and demo
  candidates, searched in a few trials on the training examples.
- `gepa`: DSPy's GEPA, with the job's LM reflecting on its own traces (only
  worth it with an LM that can), its metric calls bounded by the budget.

The `agreement` metric is the service's own: the share of the fields
feedback vouched for (`TrainingExample.judged`) that an answer gets exactly
right. It needs nothing but the examples, which a program's own metric
(written for its dev set: `qa`'s reads `answer_contains`) may not.
"""

import json
from collections.abc import Callable
from typing import Any

import dspy

from core.optimizations import MetricName, Optimizer
from program.registry import Metric

# MIPROv2 without presets: this many candidates of instructions and of demo sets, and trials to search them.
_MIPRO_CANDIDATES = 3
_MIPRO_TRIALS = 6


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.strip() == b.strip()
    dump = getattr(b, "model_dump", None)
    if callable(dump):
        b = dump(mode="json")
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def agreement_metric(judged: Callable[[dspy.Example], list[str]]) -> Metric:
    """Share of an example's judged fields that the prediction has exactly (text compared without its ends)."""

    def metric(example: dspy.Example, prediction: dspy.Prediction, trace: object = None) -> float:
        fields = judged(example)
        if not fields:
            return 0.0
        return sum(_same(example.get(name), getattr(prediction, name, None)) for name in fields) / len(fields)

    return metric


def chosen_metric(
    name: MetricName, program_metric: Metric | None, judged: Callable[[dspy.Example], list[str]]
) -> Metric:
    if name == "program":
        if program_metric is None:
            raise ValueError("the program has no metric that can be used; use metric `agreement`")
        return program_metric
    return agreement_metric(judged)


def build_candidate(
    optimizer: Optimizer,
    current: dspy.Module,
    train: list[dspy.Example],
    metric: Metric,
    demos: int,
    budget_calls: int,
    seed: int,
) -> dspy.Module:
    """A new module built from `current` and the training examples; `current` itself is never changed."""
    if optimizer == "labeled":
        return dspy.LabeledFewShot(k=demos).compile(current.deepcopy(), trainset=train, sample=False)
    if optimizer == "bootstrap":
        teleprompter = dspy.BootstrapFewShot(
            metric=metric,
            metric_threshold=1.0,
            max_bootstrapped_demos=demos,
            max_labeled_demos=demos,
            max_rounds=1,
            max_errors=len(train) + 1,
        )
        return teleprompter.compile(current.reset_copy(), teacher=current.deepcopy(), trainset=train)
    if optimizer == "mipro":
        teleprompter = dspy.MIPROv2(
            metric=metric,
            auto=None,
            num_candidates=_MIPRO_CANDIDATES,
            max_bootstrapped_demos=demos,
            max_labeled_demos=demos,
            num_threads=1,
            max_errors=len(train) + 1,
            seed=seed,
            verbose=False,
            track_stats=False,
        )
        return teleprompter.compile(
            current.deepcopy(), trainset=train, valset=train, num_trials=_MIPRO_TRIALS, minibatch=False
        )
    lm = dspy.settings.lm

    def gepa_metric(
        gold: dspy.Example,
        pred: dspy.Prediction,
        trace: object = None,
        pred_name: object = None,
        pred_trace: object = None,
    ) -> float:
        return float(metric(gold, pred, trace))

    teleprompter = dspy.GEPA(
        metric=gepa_metric,
        max_metric_calls=max(budget_calls // 2, len(train) + 1),
        reflection_lm=lm,
        num_threads=1,
        track_stats=False,
        seed=seed,
    )
    return teleprompter.compile(current.deepcopy(), trainset=train, valset=train)
