"""A replay's item scored with its program's metric, against what the past job's feedback says is right.

A replay (api/replays.py) runs the inputs of past jobs again; each item's
record carries the past job's answer and the reference it is judged by
(that answer with the feedback's corrections laid over it). The API
compares outputs field by field itself; the program's own metric, Python
code it cannot run, is run here when the item succeeds: on the new answer
and on the past one, against the same reference. A metric written for
other examples than production ones (one that reads a field the reference
does not have) scores nothing, with a warning; the comparison still stands.
"""

import json
import logging
from typing import Any

import dspy

from program.registry import Metric

log = logging.getLogger(__name__)


def replay_scores(metric: Metric | None, fields: dict[str, str], prediction: dspy.Prediction) -> dict[str, str]:
    """Record fields `replay_metric` and `replay_baseline_metric`, for the scores that could be made."""
    raw = fields.get("replay")
    if metric is None or not raw:
        return {}
    replay: dict[str, Any] = json.loads(raw)
    inputs: dict[str, Any] = json.loads(fields["input"])
    example = dspy.Example(**inputs, **replay.get("reference", {})).with_inputs(*inputs)
    scores = {}
    for name, answer in (
        ("replay_metric", prediction),
        ("replay_baseline_metric", dspy.Prediction(**replay.get("baseline", {}))),
    ):
        try:
            scores[name] = repr(float(metric(example, answer, None)))
        except Exception as e:
            log.warning(
                "replay item %s: the program's metric could not score it: %s: %s", fields.get("id"), type(e).__name__, e
            )
    return scores
