"""``Comparison``: the layer-by-layer similarity of two models, with its statistics.

A data object: the (La + 1, Lb + 1) matrix, the neighbour lists it came from (when known),
settings and provenance, plus the statistics computed on it (bootstrap intervals,
permutation p-values).  Analyses delegate to :mod:`layerknn.stats`, text and JSON reports
to :mod:`layerknn.report`, figures to :mod:`layerknn.plot`, files to :mod:`layerknn.store`.
Per-prompt intersection counts are derived from the neighbour lists when a statistic needs
them.  ``transpose()`` gives the (B, A) view with every statistic swapped exactly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from . import stats as _stats
from . import store
from .bootstrap import bootstrap_intervals, transpose_intervals
from .options import check_count

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from .alignment import Alignment

__all__ = ["Comparison"]

_KIND = "comparison"


class Comparison:
    """Layer-by-layer similarity of two models on the same prompts.

    Attributes
    ----------
    matrix : float64 array, shape (La + 1, Lb + 1)
        Mean over prompts of ``|N_a(i) ∩ N_b(i)| / k`` (row/column 0: embeddings), or of another
        neighbourhood measure's per-prompt score (see :data:`measure`).
    measure : str
        ``"mutual"`` (the paper's), or ``"jaccard"``, ``"rank"``, ``"cycle"``, ``"lcs"``, ``"edit"``
        (see :func:`layerknn.overlap`).
    k, n : int
    chance : float
        ``k / (n - 1)``, the expected overlap of unrelated neighbour sets.
    names : tuple of str
        Model names (A, B).
    num_layers_a, num_layers_b : int
        Block counts La, Lb.
    dataset, pooling : str or None
    neighbors_a, neighbors_b : int32 arrays (L + 1, n, k) or None
        The neighbour lists (None for :meth:`from_matrix`).
    per_prompt : uint16 array (La + 1, Lb + 1, n) or None
        Intersection sizes per prompt, derived from the neighbour lists on first use.
    tie_rate_a, tie_rate_b : float arrays (L + 1,) or None
        Per layer, the fraction of prompts whose k-th and (k+1)-th neighbour scores tie.
    ci : dict or None
        Bootstrap intervals, filled by :meth:`bootstrap`.
    p_values : float array (La + 1, Lb + 1) or None
        Per-cell permutation p-values, filled by :meth:`calibrate` / :meth:`permutation_test`.
    calibration : PermutationNull or None
        The whole permutation null (family-wise p, calibrated matrix, Spearman p-values).
    meta : dict
        Provenance: each model's extraction settings, timings, the options used.

    Examples
    --------
    >>> import numpy as np
    >>> c = Comparison.from_matrix(np.eye(4) * 0.5 + 0.01, n=100, k=5, names=("a", "b"))
    >>> c.best_match()["a_to_b"].tolist()
    [0, 1, 2, 3]
    >>> round(c.depth_alignment()["spearman_ab"], 3)
    1.0
    """

    def __init__(self, matrix: Any, *, n: int, k: int, names: Sequence[str] = ("A", "B"),
                 num_layers: Sequence[int] | None = None, per_prompt: np.ndarray | None = None,
                 neighbors: tuple[np.ndarray, np.ndarray] | None = None,
                 tie_rates: tuple[np.ndarray | None, np.ndarray | None] | None = None,
                 dataset: str | None = None, pooling: str | None = None, meta: dict | None = None,
                 measure: str = "mutual"):
        from .overlap import MEASURES

        matrix = np.asarray(matrix, dtype=np.float64)
        if measure not in MEASURES:
            raise ValueError(f"measure must be one of {', '.join(map(repr, MEASURES))}, got {measure!r}")
        self.measure = measure
        if matrix.ndim != 2 or min(matrix.shape) < 2:
            raise ValueError(f"matrix must have shape (La + 1, Lb + 1) with La, Lb >= 1, got {matrix.shape}")
        if not np.all(np.isfinite(matrix)):
            raise ValueError("matrix must hold finite values")
        self.n, self.k = check_count(n, "n", 2), check_count(k, "k", 1)
        if k > n - 1:
            raise ValueError(f"k must be in [1, n-1] = [1, {n - 1}], got k={k} (n={n})")
        self.matrix = matrix
        names = tuple(str(s) for s in (names if names is not None else ("A", "B")))
        if len(names) != 2:
            raise ValueError(f"names must hold two strings, got {names!r}")
        self.names = names
        la, lb = num_layers if num_layers is not None else (matrix.shape[0] - 1, matrix.shape[1] - 1)
        if (la + 1, lb + 1) != matrix.shape:
            raise ValueError(f"num_layers {(la, lb)} do not match matrix shape {matrix.shape}")
        self.num_layers_a, self.num_layers_b = int(la), int(lb)
        self.neighbors_a, self.neighbors_b = neighbors if neighbors is not None else (None, None)
        for side, nb, layers in (("a", self.neighbors_a, la), ("b", self.neighbors_b, lb)):
            if nb is not None and np.shape(nb) != (layers + 1, self.n, self.k):
                raise ValueError(f"neighbors_{side} must have shape {(layers + 1, self.n, self.k)}, "
                                 f"got {np.shape(nb)}")
        if per_prompt is not None and np.shape(per_prompt) != matrix.shape + (self.n,):
            raise ValueError(f"per_prompt must have shape {matrix.shape + (self.n,)}, got {np.shape(per_prompt)}")
        top = self.k if measure == "mutual" else 1
        if per_prompt is not None and np.size(per_prompt) and (np.min(per_prompt) < 0 or np.max(per_prompt) > top):
            what = f"counts in [0, k] = [0, {self.k}]" if measure == "mutual" else f"{measure} scores in [0, 1]"
            raise ValueError(f"per_prompt must hold {what}, got values in [{np.min(per_prompt)}, {np.max(per_prompt)}]")
        self._per_prompt = per_prompt
        self.tie_rate_a, self.tie_rate_b = tie_rates if tie_rates is not None else (None, None)
        self.dataset, self.pooling = dataset, pooling
        self.meta = dict(meta or {})
        self.ci: dict | None = None
        self.p_values: np.ndarray | None = None
        self.permutation_info: dict | None = None
        self.calibration = None
        self._alignments: dict = {}

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_matrix(cls, matrix: Any, *, n: int, k: int, names: Sequence[str] | None = None,
                    dataset: str | None = None, pooling: str | None = None) -> "Comparison":
        """Wrap a bare (La + 1) x (Lb + 1) similarity matrix, e.g. one published elsewhere.

        Analyses that need per-prompt counts (bootstrap, permutation test) raise ValueError.

        Examples
        --------
        >>> import numpy as np
        >>> c = Comparison.from_matrix(np.full((3, 4), 0.2), n=50, k=5)
        >>> c.num_layers_a, c.num_layers_b, round(c.chance, 4)
        (2, 3, 0.102)
        """
        return cls(matrix, n=n, k=k, names=names or ("A", "B"), dataset=dataset, pooling=pooling)

    # ------------------------------------------------------------------ basic properties
    @property
    def chance(self) -> float:
        """``k / (n - 1)``."""
        return self.k / (self.n - 1)

    @property
    def name_a(self) -> str:
        return self.names[0]

    @property
    def name_b(self) -> str:
        return self.names[1]

    @property
    def per_prompt(self) -> np.ndarray | None:
        """uint16 intersection sizes (La + 1, Lb + 1, n), computed from the neighbour lists when first read."""
        if self._per_prompt is None and self.neighbors_a is not None and self.neighbors_b is not None:
            from .overlap import overlap

            self._per_prompt = np.asarray(overlap(self.neighbors_a, self.neighbors_b, self.k, measure=self.measure,
                                                  per_prompt=True)[1])
        return self._per_prompt

    def __repr__(self) -> str:
        return (f"Comparison({self.name_a!r} [{self.num_layers_a} blocks] vs {self.name_b!r} "
                f"[{self.num_layers_b} blocks], n={self.n}, k={self.k}, max={self.matrix.max():.3f}, "
                f"chance={self.chance:.4f})")

    @property
    def _count_scale(self) -> int:
        """What per-prompt counts are divided by: k for overlap counts, 1 for other measures' scores."""
        return self.k if self.measure == "mutual" else 1

    def _need_counts(self, what: str) -> np.ndarray:
        counts = self.per_prompt
        if counts is None:
            raise ValueError(f"{what} needs per-prompt overlap counts, which this Comparison lacks "
                             "(it was built from a bare matrix); run layerknn.compare on activations instead")
        return counts

    # ------------------------------------------------------------------ analyses
    def best_match(self, include_embeddings: bool = True) -> dict:
        """Best-matching layer of B for every layer of A, and the reverse: argmax, ties to the lowest index.

        Returns
        -------
        dict
            ``layers_a``, ``a_to_b`` (B layer index per A layer), ``a_to_b_depth``,
            ``layers_b``, ``b_to_a``, ``b_to_a_depth`` (numpy arrays).
        """
        s = _stats.depth_alignment_stats(self.matrix, self.num_layers_a, self.num_layers_b,
                                         include_embeddings=include_embeddings)
        start = 0 if include_embeddings else 1
        return {
            "layers_a": np.arange(start, self.num_layers_a + 1),
            "a_to_b": s["best_ab"], "a_to_b_depth": s["best_depth_ab"],
            "layers_b": np.arange(start, self.num_layers_b + 1),
            "b_to_a": s["best_ba"], "b_to_a_depth": s["best_depth_ba"],
        }

    def depth_alignment(self, near: float = 0.1, far: float = 0.3, include_embeddings: bool = False) -> dict:
        """Do best matches sit at the same normalised depth (l / L) in both models?

        Returns
        -------
        dict
            ``spearman_ab``, ``spearman_ba``, ``mean_abs_depth_error`` (+ ``_ab``, ``_ba``),
            ``near_mean`` (mean similarity of cells with |Δdepth| <= near), ``far_mean``
            (|Δdepth| > far); blocks 1..L only unless ``include_embeddings``.
        """
        s = _stats.depth_alignment_stats(self.matrix, self.num_layers_a, self.num_layers_b,
                                         near=near, far=far, include_embeddings=include_embeddings)
        return {key: s[key] for key in _stats.DEPTH_STATS}

    def alignment(self, method: str = "monotone", *, reg: float = 0.1, include_embeddings: bool | None = None,
                  n_boot: int | None = None, seed: int | None = None, level: float | None = None) -> "Alignment":
        """Layer correspondence A -> B with a global score and bootstrap bands (:func:`layerknn.alignment.align`).

        ``method``: ``"argmax"`` (best matches), ``"monotone"`` (best order-preserving path) or
        ``"ot"`` (entropic optimal transport by depth mass; needs POT).  Bands resample prompts
        from the per-prompt counts, by default with the settings of the last :meth:`bootstrap`
        (none when it did not run).  Results are kept per setting.

        Examples
        --------
        >>> import numpy as np
        >>> a = Comparison.from_matrix(np.eye(4) * 0.5 + 0.01, n=100, k=5).alignment("monotone")
        >>> a.path.tolist(), round(a.score, 2), a.bands_reason
        ([1, 2, 3], 0.51, 'no per-prompt counts (a bare matrix)')
        """
        from .alignment import METHODS, align
        from .alignment_ot import check_reg

        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
        ci = self.ci or {}
        key = (method, check_reg(reg) if method == "ot" else None,
               self.geometry()["include_embeddings"] if include_embeddings is None else bool(include_embeddings),
               check_count(ci.get("n_boot", 0) if n_boot is None else n_boot, "n_boot"),
               ci.get("seed", 0) if seed is None else seed, float(ci.get("level", 0.95) if level is None else level))
        if key not in self._alignments:
            self._alignments[key] = align(self.matrix, self.num_layers_a, self.num_layers_b, method, reg=reg,
                                          include_embeddings=key[2], counts=self.per_prompt, k=self._count_scale,
                                          n_boot=key[3], seed=key[4], level=key[5])
        return self._alignments[key]

    def geometry(self) -> dict:
        """The near/far/embeddings settings the statistics were computed with (defaults without a bootstrap)."""
        if self.ci is None:
            return {"near": 0.1, "far": 0.3, "include_embeddings": False}
        return {key: self.ci[key] for key in ("near", "far", "include_embeddings")}

    def bootstrap(self, n_boot: int = 1000, seed: int | None = 0, level: float = 0.95, *,
                  near: float = 0.1, far: float = 0.3, include_embeddings: bool = False,
                  progress: bool = False) -> dict:
        """Bootstrap intervals over prompts for every cell and every depth statistic.

        Prompts are resampled with replacement ``n_boot`` times (seeded); each replicate's
        matrix comes from the per-prompt counts.  The result is stored in ``self.ci``.

        Caveat: prompts' overlaps are not fully independent (reciprocal neighbours make
        them come in pairs), so cell intervals run somewhat narrow; use
        :meth:`permutation_test` to test cells against chance.

        Returns
        -------
        dict
            ``matrix_low``/``matrix_high`` (La+1, Lb+1), ``stats`` {name: (low, high)},
            ``best_depth_ab_low``/``_high`` and ``best_depth_ba_low``/``_high`` (per block),
            and the settings.
        """
        counts = self._need_counts("bootstrap")
        n_boot = check_count(n_boot, "n_boot", 1)
        self.ci = bootstrap_intervals(counts, self._count_scale, self.num_layers_a, self.num_layers_b,
                                      n_boot=n_boot, seed=seed, level=level, near=near, far=far,
                                      include_embeddings=include_embeddings, progress=progress)
        return self.ci

    def calibrate(self, n_perm: int = 1000, seed: int | None = 0, *, progress: bool = False):
        """The permutation null of every cell and of depth tracking, from one set of prompt shuffles.

        Which prompt of B pairs with which of A is shuffled ``n_perm`` times (B's neighbour
        lists relabelled, no new search); see :func:`layerknn.calibration.permutation_null`.
        Stored in ``self.calibration``; ``self.p_values`` are its per-cell p-values.

        Returns
        -------
        PermutationNull
            ``null_mean``, ``null_std``, ``p_values``, ``p_family`` (family-wise p of the
            largest block cell), ``p_adjusted`` (max-statistic adjusted per cell),
            ``calibrated`` = (matrix - null_mean) / (1 - null_mean), and the Spearman
            statistics' p-values (``spearman_p["spearman_min"]``: both directions track).

        Examples
        --------
        >>> import numpy as np, layerknn
        >>> acts = np.random.default_rng(0).standard_normal((5, 80, 8)).astype(np.float32)
        >>> c = layerknn.compare(acts, acts, k=5, bootstrap=0, permutations=0)
        >>> null = c.calibrate(n_perm=99)
        >>> null.p_family, float(null.calibrated[1, 1])
        (0.01, 1.0)
        """
        if self.neighbors_a is None or self.neighbors_b is None:
            raise ValueError("calibrate needs the neighbour lists, which this Comparison lacks "
                             "(it was built from a bare matrix or loaded without them)")
        from .calibration import permutation_null
        from .overlap import overlap

        n_perm = check_count(n_perm, "n_perm", 1)
        bar = _bar(progress, n_perm, "permutations", "perm")
        try:
            null = permutation_null(self.neighbors_a, self.neighbors_b, self.k, n_perm=n_perm, seed=seed,
                                    overlap=lambda a, b, k: overlap(a, b, k, measure=self.measure),
                                    observed=self.matrix,
                                    include_embeddings=self.geometry()["include_embeddings"],
                                    progress=bar.update if bar else None)
        finally:
            if bar is not None:
                bar.close()
        self.set_calibration(null)
        return null

    def set_calibration(self, null) -> None:
        """Attach a :class:`~layerknn.calibration.PermutationNull` (and its p-values) to this comparison."""
        self.calibration = null
        self.p_values = null.p_values
        self.permutation_info = {"n_perm": null.n_perm, "seed": null.seed, "p_family": null.p_family,
                                 "spearman_p": null.spearman_p["spearman_min"]}

    def permutation_test(self, n_perm: int = 1000, seed: int | None = 0, *, progress: bool = False) -> np.ndarray:
        """Per-cell p-values against chance (see :meth:`calibrate`, which this runs). Returns ``p_values``."""
        return self.calibrate(n_perm, seed, progress=progress).p_values

    def transpose(self) -> "Comparison":
        """The same comparison seen as (B, A): matrix, counts and every statistic transposed or swapped.

        Examples
        --------
        >>> import numpy as np
        >>> c = Comparison.from_matrix(np.arange(12.0).reshape(3, 4) / 12, n=30, k=3, names=("a", "b"))
        >>> t = c.transpose()
        >>> t.names, t.matrix.shape, bool((t.matrix == c.matrix.T).all())
        (('b', 'a'), (4, 3), True)
        """
        counts = None if self._per_prompt is None else np.swapaxes(self._per_prompt, 0, 1)
        out = Comparison(self.matrix.T, n=self.n, k=self.k, names=self.names[::-1],
                         num_layers=(self.num_layers_b, self.num_layers_a), per_prompt=counts,
                         neighbors=None if self.neighbors_a is None else (self.neighbors_b, self.neighbors_a),
                         tie_rates=(self.tie_rate_b, self.tie_rate_a), dataset=self.dataset, pooling=self.pooling,
                         meta=_swap_models(self.meta), measure=self.measure)
        if self.ci is not None:
            out.ci = transpose_intervals(self.ci)
        if self.calibration is not None:
            from .calibration import transpose_null

            out.set_calibration(transpose_null(self.calibration))
        elif self.p_values is not None:
            out.p_values = self.p_values.T
            out.permutation_info = self.permutation_info
        return out

    # ------------------------------------------------------------------ reports and figures
    def verdict(self) -> dict:
        """Whether best matches track normalised depth (see :func:`layerknn.report.verdict`)."""
        from .report import verdict

        return verdict(self)

    def summary(self) -> str:
        """A plain-text report: settings, similarity levels, best-match depth tracking with CIs."""
        from .report import summary

        return summary(self)

    def to_dict(self) -> dict:
        """JSON-serialisable report (matrices as nested lists); see :func:`layerknn.report.to_dict`."""
        from .report import to_dict

        return to_dict(self)

    def _repr_html_(self) -> str:
        """Jupyter: a summary table and the heatmap inline (nothing written to disk)."""
        from .display import comparison_html

        return comparison_html(self)

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        """IPython terminals: the plain-text summary."""
        printer.text(repr(self) if cycle else self.summary())

    def plot(self, path: "str | os.PathLike", *, alignment: str | None = "monotone", **kwargs) -> Path:
        """Heatmap with :meth:`alignment`'s match drawn over it (None: none); see :func:`layerknn.plot.heatmap`."""
        from .plot import heatmap

        return heatmap(self, path, alignment=None if alignment is None else self.alignment(alignment), **kwargs)

    def plot_depth(self, path: "str | os.PathLike", **kwargs) -> Path:
        """Best-match depth curves with bootstrap bands (see :func:`layerknn.plot.depth_curve`)."""
        from .plot import depth_curve

        return depth_curve(self, path, **kwargs)

    # ------------------------------------------------------------------ persistence
    def save(self, path: "str | os.PathLike") -> Path:
        """Write the comparison in layerknn's checked format (``.npz``, no pickles). Returns the path.

        Examples
        --------
        >>> import numpy as np, tempfile, os
        >>> c = Comparison.from_matrix(np.eye(3) * 0.8 + 0.1, n=20, k=3)
        >>> p = c.save(os.path.join(tempfile.mkdtemp(), "c.npz"))
        >>> np.allclose(Comparison.load(p).matrix, c.matrix)
        True
        """
        from .persist import comparison_arrays

        arrays, meta = comparison_arrays(self)
        return store.write(path, arrays, meta, kind=_KIND)

    @classmethod
    def load(cls, path: "str | os.PathLike") -> "Comparison":
        """Read a file written by :meth:`save`, checking its values (ValueError naming the file)."""
        from .persist import comparison_parts

        arrays, meta = store.read(path, kind=_KIND)
        parts = comparison_parts(arrays, meta, str(path))
        c = cls(**parts["init"])
        c.ci = parts["ci"]
        if parts["calibration"] is not None:
            c.set_calibration(parts["calibration"])
        return c


def _swap_models(meta: dict) -> dict:
    out = dict(meta)
    if "model_a" in meta or "model_b" in meta:
        out["model_a"], out["model_b"] = meta.get("model_b"), meta.get("model_a")
    return out


def _bar(progress: bool, total: int, desc: str, unit: str):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False)
