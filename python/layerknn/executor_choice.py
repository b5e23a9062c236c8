"""Which executor runs a zoo's units: the in-process one, or Ray (imported only when asked for)."""

from __future__ import annotations

from typing import Any

from .executors import LocalExecutor

__all__ = ["get_executor"]


def get_executor(executor: Any) -> Any:
    """An executor from ``"local"``, ``"ray"``, a Ray address (``"auto"``, ``"ray://host:port"``,
    ``"ray:HOST:PORT"``) or an executor object.

    Examples
    --------
    >>> get_executor("local")
    LocalExecutor()
    """
    if hasattr(executor, "map_units") and hasattr(executor, "map_pairs"):
        return executor
    if not isinstance(executor, str):
        raise TypeError(f"executor must be 'local', 'ray', a Ray address or an executor object, "
                        f"got {type(executor).__name__}")
    if executor == "local":
        return LocalExecutor()
    from .ray_executor import RayExecutor

    if executor == "ray":
        return RayExecutor()
    if executor == "auto" or executor.startswith("ray://"):
        return RayExecutor(executor)
    if executor.startswith("ray:"):
        return RayExecutor(executor[len("ray:"):])
    raise ValueError(f"executor must be 'local', 'ray', 'auto', 'ray://host:port' or 'ray:host:port', "
                     f"got {executor!r}")
