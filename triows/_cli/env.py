"""The ``TRIOWS_*`` environment variables: how a flag's variable is named, and the ones the
supervisor of ``--workers`` sets for its workers.

Apart from both the CLI's entry point and the supervisor so that each reads the same names
without importing the other.
"""

from __future__ import annotations


def env_name(flag: str) -> str:
    """``--max-connections`` -> ``TRIOWS_MAX_CONNECTIONS``."""
    return "TRIOWS_" + flag[2:].upper().replace("-", "_")


#: Set by ``--workers`` for each worker process: its index, shown in every log line.
WORKER_ENV = "TRIOWS_WORKER_INDEX"
#: The supervisor's pid, in a worker's environment.
SUPERVISOR_ENV = "TRIOWS_SUPERVISOR_PID"
#: The directory where workers share their figures (``Config.shared_stats_dir``).
STATS_DIR_ENV = "TRIOWS_STATS_DIR"
#: Variables the supervisor of ``--workers`` sets for its workers: known, not flags.
INTERNAL_ENV = (WORKER_ENV, SUPERVISOR_ENV, STATS_DIR_ENV)
