"""Credentials out of every text a client or a log may see.

A URL may carry a user and password (`https://user:token@mlflow.internal`,
`redis://:password@host`): error messages from libraries repeat the URL they
failed on, and our own messages name the LM or tracking server. Texts that
leave the process (API error bodies, the problems workers publish, log lines)
pass through `without_credentials` first.
"""

import re

MASK = "[redacted]"
# scheme://user:password@ or scheme://token@: the user information of any URL.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@\"']+@")


def without_credentials(text: str) -> str:
    return _USERINFO.sub(rf"\1{MASK}@", text)
