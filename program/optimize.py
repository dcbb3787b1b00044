"""Rebuild a program's artifact: `python -m program.optimize [name] [--optimizer labeled|bootstrap]`.

`labeled` (the default) puts hand-written demos from the bundled training set
into the prompt. That is what the embedded Gemma 3 270M needs: it is a base
model that cannot produce the output format by itself, so bootstrapping
demos from its own outputs finds nothing. `bootstrap` runs DSPy's
BootstrapFewShot with the configured LM, for models that can.

Either way the result is scored on the bundled dev set with the configured
LM, and the artifact records what it was built with, when, and its score.
"""

import argparse
import json
import logging
import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dspy

from core.settings import get_settings
from program.lm import build_adapter, build_lm
from program.registry import PROGRAMS, ProgramSpec, get_program_spec

log = logging.getLogger(__name__)


def optimize(spec: ProgramSpec, optimizer: str, demos: int) -> tuple[dspy.Module, float]:
    settings = get_settings()
    lm = build_lm(settings)
    trainset = spec.trainset()
    with dspy.context(lm=lm, adapter=build_adapter(), disable_history=True):
        if optimizer == "labeled":
            compiled = dspy.LabeledFewShot(k=demos).compile(spec.build(), trainset=trainset, sample=False)
        else:
            teleprompter = dspy.BootstrapFewShot(
                metric=spec.metric, max_bootstrapped_demos=demos, max_labeled_demos=demos
            )
            compiled = teleprompter.compile(spec.build(), trainset=trainset)
        evaluate = dspy.Evaluate(devset=spec.devset(), metric=spec.metric, num_threads=1, display_progress=False)
        score = float(evaluate(compiled).score)
    return compiled, score


def write_artifact(program: dspy.Module, path: Path, metadata: dict[str, Any]) -> None:
    """Save JSON state (never pickle) plus our metadata, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "state.json"
        program.save(str(raw), save_program=False)
        state = json.loads(raw.read_text())
    state.setdefault("metadata", {}).update(metadata)
    tmp_path = path.with_suffix(".json.tmp")
    tmp_path.write_text(json.dumps(state, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp_path, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", default="qa", choices=sorted(PROGRAMS))
    parser.add_argument("--optimizer", choices=["labeled", "bootstrap"], default="labeled")
    parser.add_argument("--demos", type=int, default=3, help="few-shot demos to keep")
    parser.add_argument("--out", type=Path, help="artifact path (default: artifacts/<name>.json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    settings = get_settings()
    spec = get_program_spec(args.name)
    out = args.out or spec.artifact_path(settings.artifacts_dir)
    log.info("optimizing %s with %s on %s ...", spec.name, args.optimizer, settings.lm_model)
    compiled, score = optimize(spec, args.optimizer, args.demos)
    write_artifact(
        compiled,
        out,
        {
            "program": spec.name,
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "lm_model": settings.lm_model,
            "optimizer": args.optimizer,
            "demos": args.demos,
            "trainset": spec.trainset_file.name,
            "devset": spec.devset_file.name,
            "dev_score": score,
            "dspy_version": dspy.__version__,
        },
    )
    log.info("wrote %s (dev score %.1f%%)", out, score)
    return 0


if __name__ == "__main__":
    sys.exit(main())
