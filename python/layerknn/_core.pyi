"""Type stub for layerknn._core, the compiled engines (private: use the layerknn package)."""

from collections.abc import Callable
from types import ModuleType

import numpy as np
import numpy.typing as npt

__version__: str

def built_with_cuda() -> bool: ...
def cuda_device_count() -> tuple[int, str]: ...
def cuda_max_k() -> int: ...
def simd_level() -> str: ...
def tile_precisions() -> list[str]: ...
def default_num_threads() -> int: ...
def row_sq_norms(x: npt.NDArray[np.float32], num_threads: int = 0) -> npt.NDArray[np.float64]: ...
def active_kernel_table() -> str: ...
def knn_cpu(
    x: npt.NDArray[np.float32], y: npt.NDArray[np.float32] | None, k: int, metric: int,
    exclude_self: bool, num_threads: int = 0,
    progress: Callable[[int, int], object] | None = None,
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]: ...
def overlap_cpu(
    a: npt.NDArray[np.int32], b: npt.NDArray[np.int32], k: int, per_prompt: bool,
    num_threads: int = 0,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.uint16] | None]: ...
def overlap_measure_cpu(
    a: npt.NDArray[np.int32], b: npt.NDArray[np.int32], k: int, measure: int, per_prompt: bool,
    num_threads: int = 0,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float32] | None]: ...
def knn_cuda(
    x: int, y: int, L: int, n: int, m: int, d: int, k: int, metric: int, exclude_self: bool,
    indices: int, scores: int, device: int, stream: int,
) -> None: ...
def overlap_cuda(
    a: int, b: int, La: int, Lb: int, n: int, ka: int, kb: int, k: int, mean: int, counts: int,
    device: int, stream: int,
) -> None: ...

class _testing(ModuleType):  # the CPU engine's pure cores, for tests only (csrc/testing_hooks.h)
    @staticmethod
    def tile_error(
        precision: int, dpad: float, x: tuple[float, float, float], y: tuple[float, float, float],
    ) -> float: ...
    @staticmethod
    def exact_error(metric: int, d: float, ax: float, ay: float) -> float: ...
    @staticmethod
    def key_error(
        metric: int, precision: int, d: float, dpad: float, x: tuple[float, float, float],
        y: tuple[float, float, float],
    ) -> float: ...
    @staticmethod
    def key_window(
        metric: int, precision: int, d: int, dpad: int, x: tuple[float, float, float],
        y: tuple[float, float, float],
    ) -> float: ...
    @staticmethod
    def cheapest_precision(
        pass_rows: float, k: int, list_budget: float, low: list[tuple[int, float]],
    ) -> int: ...
    @staticmethod
    def row_stats(x: npt.NDArray[np.float32], normalise: bool) -> tuple[float, float, float]: ...
    @staticmethod
    def exact_scores(
        a: npt.NDArray[np.float32], b: npt.NDArray[np.float32], metric: int, sa: float,
        sb: npt.NDArray[np.float32],
    ) -> npt.NDArray[np.float32]: ...
