"""Programs the service can run, looked up by name.

Each entry says how to build the module, where its optimized state lives
and, for `python -m program.optimize`, its training set and metric. Only
`qa` exists today; serving another program means adding an entry here.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dspy

from program.qa import QA, answer_metric

DATA_DIR = Path(__file__).parent / "data"

Metric = Callable[[dspy.Example, dspy.Prediction, object], float]


@dataclass(frozen=True)
class ProgramSpec:
    name: str
    build: Callable[[], dspy.Module]
    input_fields: tuple[str, ...]
    trainset_file: Path
    devset_file: Path
    metric: Metric

    def artifact_path(self, artifacts_dir: str | Path) -> Path:
        return Path(artifacts_dir) / f"{self.name}.json"

    def trainset(self) -> list[dspy.Example]:
        return _examples(self.trainset_file, self.input_fields)

    def devset(self) -> list[dspy.Example]:
        return _examples(self.devset_file, self.input_fields)


def _examples(path: Path, input_fields: tuple[str, ...]) -> list[dspy.Example]:
    rows = json.loads(path.read_text())
    return [dspy.Example(**row).with_inputs(*input_fields) for row in rows]


PROGRAMS: dict[str, ProgramSpec] = {
    "qa": ProgramSpec(
        name="qa",
        build=QA,
        input_fields=("question",),
        trainset_file=DATA_DIR / "qa_train.json",
        devset_file=DATA_DIR / "qa_dev.json",
        metric=answer_metric,
    ),
}


class UnknownProgramError(KeyError):
    pass


def get_program_spec(name: str) -> ProgramSpec:
    try:
        return PROGRAMS[name]
    except KeyError as e:
        raise UnknownProgramError(f"no program named {name!r}; known: {sorted(PROGRAMS)}") from e
