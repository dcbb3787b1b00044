"""The question-answering program users of this stack start from.

A ChainOfThought over `question -> answer, key_concepts, question_type`. Its
optimized state (few-shot demos) is `artifacts/qa.json`, rebuilt by
`python -m program.optimize qa`.
"""

from typing import Literal

import dspy

QuestionType = Literal["factual", "opinion", "analytical"]


class AnswerQuestion(dspy.Signature):
    """Answer a question with detailed reasoning."""

    question: str = dspy.InputField(desc="The question to answer.")
    answer: str = dspy.OutputField(desc="A direct, complete answer to the question.")
    key_concepts: list[str] = dspy.OutputField(desc="The main concepts the answer relies on.")
    question_type: QuestionType = dspy.OutputField(
        desc="factual (one verifiable answer), opinion (a matter of taste or values) or analytical (needs reasoning)."
    )


class QA(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.generate = dspy.ChainOfThought(AnswerQuestion)

    def forward(self, question: str) -> dspy.Prediction:
        return self.generate(question=question)

    async def aforward(self, question: str) -> dspy.Prediction:
        return await self.generate.acall(question=question)


def answer_metric(example: dspy.Example, prediction: dspy.Prediction, trace: object = None) -> float:
    """Half for the right question type, half for naming the expected answer."""
    score = 0.0
    if getattr(prediction, "question_type", None) == example.question_type:
        score += 0.5
    if str(example.answer_contains).lower() in str(getattr(prediction, "answer", "")).lower():
        score += 0.5
    return score
