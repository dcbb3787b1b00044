"""Build a program's artifact: `python -m program.optimize NAME [--optimizer labeled|bootstrap|none]`.

Works for any registered program (core/programs.py): `labeled` and
`bootstrap` need its `trainset` (and `bootstrap` its `metric`); `none`
packages the module as it is, for programs that run well zero-shot.

`labeled` (the default) puts hand-written demos from the bundled training set
into the prompt. That is what the embedded Gemma 3 270M needs: it is a base
model that cannot produce the output format by itself, so bootstrapping
demos from its own outputs finds nothing. `bootstrap` runs DSPy's
BootstrapFewShot with the configured LM, for models that can.

The result is scored on the program's `devset` with its `metric` (when it
has both) on the configured LM. The artifact is the module's JSON state plus
our `metadata`: the program, a version one above the artifact it replaces,
when and how it was built, the dev score, the dspy version, and the JSON
Schemas of the signature's fields, which is all the API reads of it.

With `--register` the build is not written to the file: it is registered in
Redis as the program's next version (core/program_versions.py), which every
worker loads and a rollout can then serve to a share of the jobs.
"""

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dspy

from core import program_versions
from core.redis_clients import async_client
from core.settings import Settings, get_settings
from program.lm import build_adapter, build_lm
from program.registry import ProgramSpec, program_specs
from program.schemas import signature_schemas

log = logging.getLogger(__name__)


def optimize(spec: ProgramSpec, optimizer: str, demos: int) -> tuple[dspy.Module, float | None]:
    settings = get_settings()
    lm = build_lm(settings)
    with dspy.context(lm=lm, adapter=build_adapter(settings), disable_history=True):
        if optimizer == "none":
            compiled = spec.build()
        elif optimizer == "labeled":
            compiled = dspy.LabeledFewShot(k=demos).compile(spec.build(), trainset=spec.trainset(), sample=False)
        else:
            teleprompter = dspy.BootstrapFewShot(
                metric=spec.metric(), max_bootstrapped_demos=demos, max_labeled_demos=demos
            )
            compiled = teleprompter.compile(spec.build(), trainset=spec.trainset())
        if not (spec.entry.devset and spec.entry.metric):
            return compiled, None
        evaluate = dspy.Evaluate(devset=spec.devset(), metric=spec.metric(), num_threads=1, display_progress=False)
        score = float(evaluate(compiled).score)
    return compiled, score


def next_version(path: Path) -> int:
    """One above the version of the artifact being replaced (1 for the first)."""
    try:
        previous = json.loads(path.read_text()).get("metadata", {}).get("version")
    except (OSError, ValueError, AttributeError):
        return 1
    return int(previous) + 1 if isinstance(previous, int) else 1


def artifact(program: dspy.Module, metadata: dict[str, Any]) -> dict[str, Any]:
    """The artifact: the module's JSON state (never pickle) plus our metadata."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "state.json"
        program.save(str(raw), save_program=False)
        state: dict[str, Any] = json.loads(raw.read_text())
    state.setdefault("metadata", {}).update(metadata)
    return state


def write_artifact(program: dspy.Module, path: Path, metadata: dict[str, Any]) -> None:
    """Save the artifact, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = artifact(program, metadata)
    tmp_path = path.with_suffix(".json.tmp")
    tmp_path.write_text(json.dumps(state, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp_path, path)


def main(argv: list[str] | None = None) -> int:
    settings = get_settings()
    specs = program_specs(settings)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", default=settings.default_program, choices=sorted(specs))
    parser.add_argument("--optimizer", choices=["labeled", "bootstrap", "none"], default="labeled")
    parser.add_argument("--demos", type=int, default=3, help="few-shot demos to keep")
    parser.add_argument("--out", type=Path, help="artifact path (default: the program's registered artifact)")
    parser.add_argument(
        "--register",
        action="store_true",
        help="register the build in Redis (REDIS_URL) as the program's next version instead of writing the file: "
        "every worker loads it, and a rollout can serve it (docs/feedback.md)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    spec = specs[args.name]
    if spec.entry.mlflow_uri is not None:
        parser.error(
            f"{spec.name} is served from MLflow ({spec.entry.mlflow_uri}): log a new version with "
            "mlflow.dspy.log_model (and move its alias) instead of building an artifact"
        )
    out = args.out or spec.artifact
    log.info("optimizing %s with %s on %s ...", spec.name, args.optimizer, settings.lm_model)
    compiled, score = optimize(spec, args.optimizer, args.demos)
    version = next_version(out)
    metadata = {
        "program": spec.name,
        "version": version,
        "module": spec.entry.module,
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "lm_model": settings.lm_model,
        "optimizer": args.optimizer,
        "demos": args.demos if args.optimizer != "none" else 0,
        "trainset": spec.entry.trainset if args.optimizer != "none" else None,
        "devset": spec.entry.devset,
        "dev_score": score,
        "dspy_version": dspy.__version__,
        "signature": signature_schemas(spec.name, spec.signature(compiled)),
    }
    scored = f"dev score {score:.1f}%" if score is not None else "not scored: no devset and metric"
    if args.register:
        registered = asyncio.run(_register(settings, spec.name, artifact(compiled, metadata), str(version - 1)))
        log.info("registered %s version %s in Redis (%s); not serving it yet", spec.name, registered, scored)
        return 0
    write_artifact(compiled, out, metadata)
    log.info("wrote %s version %d (%s)", out, version, scored)
    return 0


async def _register(settings: Settings, name: str, state: dict[str, Any], disk_version: str) -> str:
    client = async_client(settings, max_connections=2)
    try:
        return await program_versions.register(client, name, state, disk_version)
    finally:
        await client.aclose()


if __name__ == "__main__":
    sys.exit(main())
