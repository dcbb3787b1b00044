"""A typed classifier served next to `qa`: support-ticket triage.

`ticket -> category, urgency, summary`, with a `Literal` category and an
`int` urgency, so its jobs come back typed (a string, an integer, a string)
and its API schema says so. A plain `Predict`: a classifier needs no
reasoning, and every token it does not write is latency saved. Its optimized
state (few-shot demos) is `artifacts/triage.json`, rebuilt by
`python -m program.optimize triage`.
"""

from typing import Literal

import dspy

Category = Literal["billing", "bug", "account", "feature_request", "other"]


class TriageTicket(dspy.Signature):
    """Sort a customer support ticket: what it is about, how urgent it is, and what it says in one sentence."""

    ticket: str = dspy.InputField(desc="The ticket as the customer wrote it.")
    category: Category = dspy.OutputField(desc="What the ticket is about.")
    urgency: int = dspy.OutputField(desc="1 (whenever) to 5 (business is down right now).")
    summary: str = dspy.OutputField(desc="The ticket in one short sentence.")


class Triage(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.classify = dspy.Predict(TriageTicket)

    def forward(self, ticket: str) -> dspy.Prediction:
        return self.classify(ticket=ticket)

    async def aforward(self, ticket: str) -> dspy.Prediction:
        return await self.classify.acall(ticket=ticket)


def triage_metric(example: dspy.Example, prediction: dspy.Prediction, trace: object = None) -> float:
    """0.6 for the right category, 0.4 for an urgency within one of the label."""
    score = 0.0
    if getattr(prediction, "category", None) == example.category:
        score += 0.6
    urgency = getattr(prediction, "urgency", None)
    if isinstance(urgency, int) and abs(urgency - int(example.urgency)) <= 1:
        score += 0.4
    return score
