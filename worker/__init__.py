"""Celery workers that run DSPy programs."""

from core.offline import disable_runtime_downloads

disable_runtime_downloads()
