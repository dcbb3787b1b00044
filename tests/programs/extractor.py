"""A program with typed inputs and typed outputs of every kind the API must carry as their type."""

from typing import Literal

import dspy
from pydantic import BaseModel


class Address(BaseModel):
    city: str
    zip: int


class ExtractFacts(dspy.Signature):
    """Pull typed facts out of a note."""

    note: str = dspy.InputField(desc="Free text to read.")
    priority: int = dspy.InputField(desc="How much the caller cares, 1 to 5.")
    labels: list[str] = dspy.InputField(desc="Labels the caller already knows.")
    colour: Literal["red", "green"] = dspy.OutputField(desc="The colour the note is about.")
    count: int = dspy.OutputField()
    score: float = dspy.OutputField()
    keywords: list[str] = dspy.OutputField()
    address: Address = dspy.OutputField()
    summary: str = dspy.OutputField(desc="The note in one sentence.")


class Extractor(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.extract = dspy.Predict(ExtractFacts)

    def forward(self, note: str, priority: int, labels: list[str]) -> dspy.Prediction:
        return self.extract(note=note, priority=priority, labels=labels)

    async def aforward(self, note: str, priority: int, labels: list[str]) -> dspy.Prediction:
        return await self.extract.acall(note=note, priority=priority, labels=labels)


def colour_metric(example: dspy.Example, prediction: dspy.Prediction, trace: object = None) -> float:
    return 1.0 if getattr(prediction, "colour", None) == example.colour else 0.0
