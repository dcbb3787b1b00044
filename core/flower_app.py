"""The Celery app Flower watches: `celery -A core.flower_app flower`.

Built when Flower imports this module, and by nothing else: importing
core.queue (as every process that sets up logging does) builds no app.
"""

from core.queue import make_celery

app = make_celery()
