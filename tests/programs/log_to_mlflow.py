"""Log DSPy programs to an MLflow tracking server the way a user would, for tests/test_mlflow_programs.py.

Run as a script (`python -m tests.programs.log_to_mlflow <tracking uri>`), so MLflow's process-wide state
(its tracking URI, the active run) never enters the test process. Prints what it logged, as JSON.

- `qa-logged` version 1: the shipped `qa` program with `artifacts/qa.json`'s demos, in MLflow's default
  form (a cloudpickled wrapper, `data/model.pkl`); alias `production` points at it.
- `qa-logged` version 2: the same program with other instructions and one demo, in dspy's own form
  (`use_dspy_model_save=True`, a directory read with `dspy.load`).
- `not-dspy` version 1: a plain pyfunc model, which the service must refuse with the reason.

Both `qa` versions are logged with an LM of the logger's own configured, globally and per predictor,
pointing nowhere: a worker that used it instead of its own would fail every job.
"""

import json
import sys
from typing import Any

import dspy
import mlflow
from mlflow.pyfunc.model import PythonModel

from program.qa import QA

MODEL = "qa-logged"
V2_INSTRUCTIONS = "Answer the question in one short sentence."


class Echo(PythonModel):
    def predict(self, context: Any, model_input: Any, params: Any = None) -> Any:
        return model_input


def qa_program(lm: dspy.LM) -> QA:
    program = QA()
    program.load("artifacts/qa.json")
    program.set_lm(lm)
    return program


def main(tracking_uri: str) -> None:
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("dspy-jobs-tests")
    loggers_lm = dspy.LM("openai/the-loggers-model", api_base="http://127.0.0.1:9/v1", api_key="sk-the-loggers-key")
    dspy.configure(lm=loggers_lm)
    # Explicit requirements: inferring them costs seconds per model and says nothing here.
    requirements = ["dspy"]

    with mlflow.start_run() as run:
        v1 = mlflow.dspy.log_model(
            qa_program(loggers_lm), name="qa", registered_model_name=MODEL, pip_requirements=requirements
        )
    v2_program = qa_program(loggers_lm)
    predict = v2_program.generate.predict
    predict.signature = predict.signature.with_instructions(V2_INSTRUCTIONS)
    predict.demos = predict.demos[:1]
    with mlflow.start_run():
        v2 = mlflow.dspy.log_model(
            v2_program,
            name="qa",
            registered_model_name=MODEL,
            pip_requirements=requirements,
            use_dspy_model_save=True,
        )
    with mlflow.start_run():
        mlflow.pyfunc.log_model(name="echo", python_model=Echo(), registered_model_name="not-dspy", pip_requirements=[])
    mlflow.MlflowClient().set_registered_model_alias(MODEL, "production", v1.registered_model_version)
    print(
        json.dumps(
            {
                "run_id": run.info.run_id,
                "v1": str(v1.registered_model_version),
                "v2": str(v2.registered_model_version),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
