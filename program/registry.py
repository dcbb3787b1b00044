"""Registered programs (core/programs.py), built with dspy: module, signature, data, metric.

The program's *interface* is one signature: the one named in its entry, or
else the signature of its only predictor (for `ChainOfThought` that is the
extended one, so `reasoning` is an output like any other). Its input and
output fields become the API's schemas (program/schemas.py); a module with
several predictors must name its signature, because which predictor's
fields the caller sees is the author's decision, not ours to guess.
"""

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dspy

from core.programs import ProgramEntry, RegistryError, artifact_path, registered_programs
from core.settings import Settings

Metric = Callable[[dspy.Example, dspy.Prediction, object], float]


def import_attr(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise RegistryError(f"cannot import {module_name!r} (from {path!r}): {e}") from e
    try:
        return getattr(module, attr)
    except AttributeError as e:
        raise RegistryError(f"module {module_name!r} has no {attr!r} (from {path!r})") from e


@dataclass(frozen=True)
class ProgramSpec:
    name: str
    entry: ProgramEntry
    artifact: Path

    def build(self) -> dspy.Module:
        """A fresh, unoptimized module: a class or factory called with no arguments, or a bare signature."""
        if self.entry.module is None:
            raise RegistryError(
                f"program {self.name!r} is served from MLflow ({self.entry.mlflow_uri}) and names no `module`"
            )
        factory = import_attr(self.entry.module)
        if isinstance(factory, type) and issubclass(factory, dspy.Signature):
            return dspy.Predict(factory)
        module = factory()
        if not isinstance(module, dspy.Module):
            raise RegistryError(
                f"program {self.name!r}: {self.entry.module} returned a {type(module).__name__}, not a dspy.Module"
            )
        return module

    def signature(self, module: dspy.Module) -> type[dspy.Signature]:
        if self.entry.signature:
            signature = import_attr(self.entry.signature)
            if not (isinstance(signature, type) and issubclass(signature, dspy.Signature)):
                raise RegistryError(f"program {self.name!r}: {self.entry.signature} is not a dspy.Signature")
            return signature
        predictors = module.predictors()
        if len(predictors) != 1:
            raise RegistryError(
                f"program {self.name!r} has {len(predictors)} predictors; name the signature callers see "
                'with `signature = "package.module:Signature"` in its registry entry'
            )
        signature = predictors[0].signature
        assert isinstance(signature, type)
        return signature

    def trainset(self) -> list[dspy.Example]:
        return self._examples(self.entry.trainset, "trainset")

    def devset(self) -> list[dspy.Example]:
        return self._examples(self.entry.devset, "devset")

    def metric(self) -> Metric:
        if not self.entry.metric:
            raise RegistryError(f"program {self.name!r} has no `metric` in its registry entry")
        metric: Metric = import_attr(self.entry.metric)
        return metric

    def _examples(self, path: str | None, what: str) -> list[dspy.Example]:
        if not path:
            raise RegistryError(f"program {self.name!r} has no `{what}` in its registry entry")
        inputs = list(self.signature(self.build()).input_fields)
        rows = json.loads(Path(path).read_text())
        return [dspy.Example(**row).with_inputs(*inputs) for row in rows]


def program_specs(settings: Settings) -> dict[str, ProgramSpec]:
    return {
        name: ProgramSpec(name, entry, artifact_path(settings, name, entry))
        for name, entry in registered_programs(settings).items()
    }


class UnknownProgramError(KeyError):
    pass


def get_program_spec(settings: Settings, name: str) -> ProgramSpec:
    specs = program_specs(settings)
    try:
        return specs[name]
    except KeyError as e:
        raise UnknownProgramError(f"no program named {name!r}; known: {sorted(specs)}") from e
