"""Which request paths submit work, for the middleware that decides before any route runs."""

import re

# Every route that stores a job or a batch (POST).
SUBMISSIONS = re.compile(r"^/(?:jobs|batches|programs/[^/]+/(?:jobs|batches)|v1/chat/completions|invocations)/?$")
# `POST /batches`, `POST /programs/{name}/batches` (the page uploads through it) and OpenAI's batch input files:
# the batch body limit.
BATCH_SUBMISSIONS = re.compile(r"^/(?:(?:programs/[^/]+/)?batches|v1/files)/?$")
