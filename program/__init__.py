"""DSPy programs the service runs, their training data and the optimize command."""

from core.offline import disable_runtime_downloads

disable_runtime_downloads()
