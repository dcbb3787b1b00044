"""A program whose run kills the worker process running it when its question asks for it.

The question-answering program, except that a question containing `POISON` makes it SIGKILL its own
process before anything else, as the kernel's out-of-memory killer does: no handler runs, nothing is
reported, the job's lease simply stops being renewed. Any other question is answered as `qa` answers it.
"""

import os
import signal

import dspy

from program.qa import QA

POISON = "POISON"


def _die_if_poisoned(question: str) -> None:
    if POISON in question:
        os.kill(os.getpid(), signal.SIGKILL)


class Poison(QA):
    def forward(self, question: str) -> dspy.Prediction:
        _die_if_poisoned(question)
        return super().forward(question)

    async def aforward(self, question: str) -> dspy.Prediction:
        _die_if_poisoned(question)
        return await super().aforward(question)
