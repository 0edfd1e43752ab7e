"""What the CLI prints when the server cannot listen, from one process or a supervisor.

Both ``main`` (one process) and ``workers`` (the supervisor reserves the port) say it, in the
same words, and neither imports the other.
"""

from __future__ import annotations

from .._config import Config
from .._net.listen import ListenError


def cannot_listen(config: Config, failure: BaseException) -> str:
    if isinstance(failure, ListenError):  # it says where already
        return f"triows: error: {failure.strerror}"
    reason = getattr(failure, "strerror", None) or failure
    return f"triows: error: cannot listen on {config.host}:{config.port}: {reason}"
