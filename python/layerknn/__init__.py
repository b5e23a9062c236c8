"""layerknn: how do the layers of two (or fifty) language models relate?

Exact k-nearest-neighbour search over pooled layer activations (C++ and CUDA engines), the
neighbour-overlap similarity between every pair of layers, HuggingFace activation extraction,
and the comparison reports built on them.

Architecture (one path from models to results; nothing imports upward)::

    cli             thin: parse -> compare()/zoo() -> write one output folder
    compare, zoo    compare(a, b) is zoo([a, b]); zoos: one Zoo per dataset; defaults in options
    sources         model / path / Activations / array / Neighbors -> neighbour lists (cache)
      models, extract, datasets, knn -> _backend -> _core (CPU engine | CUDA engine)
    overlap         neighbour lists -> (La, Lb) matrices + per-prompt counts
    Comparison, Zoo data objects; stats / bootstrap (NumPy, SciPy), report, plot
    store, persist  the one on-disk format (atomic, tagged, checksummed) and value checks

Examples
--------
>>> import numpy as np, layerknn
>>> rng = np.random.default_rng(0)
>>> acts = rng.standard_normal((3, 50, 8)).astype(np.float32)   # 3 layers, 50 prompts
>>> nbrs = layerknn.knn(acts, k=5)
>>> layerknn.overlap(nbrs, nbrs).diagonal().tolist()
[1.0, 1.0, 1.0]
"""

import sys
import types

from . import _core
from ._backend import built_with_cuda, cuda_available
from .activations import Activations
from .cache import Cache
from .cka import cka
from .compare import compare
from .comparison import Comparison
from .datasets import load_texts
from .knn import Neighbors, chance, knn
from .models import list_aliases, load_model
from .options import DEFAULTS
from .overlap import overlap
from .store import FormatError
from .sweep import sweep_k
from .zoo import Zoo, zoo
from .zoos import zoos

__version__ = getattr(_core, "__version__", "0.0.0+dev")  # set by the wheel build


def extract(model, texts, **kwargs):  # replaced by layerknn.extract.extract on first use (see _Package)
    """Pooled per-layer activations of ``model`` over ``texts``: see :func:`layerknn.extract.extract`."""
    from .extract import extract as function

    return function(model, texts, **kwargs)


class _Package(types.ModuleType):
    """``layerknn.extract`` stays the function when its submodule (which imports torch) is first imported.

    The submodule is imported on first use, not with the package, so that ``import layerknn``
    and a rerun served from the cache never load torch; Python would otherwise rebind the
    package attribute ``extract`` to the submodule at that moment.
    """

    def __setattr__(self, name, value):
        if name == "extract" and isinstance(value, types.ModuleType):
            value = value.extract
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = [
    "Activations",
    "Cache",
    "Comparison",
    "DEFAULTS",
    "FormatError",
    "Neighbors",
    "Zoo",
    "built_with_cuda",
    "chance",
    "cka",
    "compare",
    "cuda_available",
    "extract",
    "knn",
    "list_aliases",
    "load_model",
    "load_texts",
    "overlap",
    "sweep_k",
    "zoo",
    "zoos",
]
