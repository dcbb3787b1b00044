"""Keep LM libraries from reaching the internet at import time.

LiteLLM fetches a model cost map from GitHub on first import unless told
not to: seconds of timeouts per process behind a firewall. This must run
before `dspy` (and so `litellm`) is imported, which is why the `worker` and
`program` packages call it from their `__init__`.
"""

import os


def disable_runtime_downloads() -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
