"""layerknn: how do the layers of two (or fifty) language models relate?

Exact k-nearest-neighbour search over pooled layer activations (C++ and CUDA engines), the
neighbour-overlap similarity between every pair of layers, HuggingFace activation extraction,
and the comparison reports built on them.

Examples
--------
>>> import numpy as np, layerknn
>>> rng = np.random.default_rng(0)
>>> acts = rng.standard_normal((3, 50, 8)).astype(np.float32)   # 3 layers, 50 prompts
>>> nbrs = layerknn.knn(acts, k=5)
>>> layerknn.overlap(nbrs, nbrs).diagonal().tolist()
[1.0, 1.0, 1.0]
"""

from . import _core
from ._backend import built_with_cuda, cuda_available
from .cache import Cache
from .compare import Comparison, compare
from .datasets import load_texts
from .extract import Activations, extract
from .knn import Neighbors, chance, knn
from .models import list_aliases, load_model
from .overlap import overlap
from .zoo import Zoo, zoo

__version__ = getattr(_core, "__version__", "0.0.0+dev")  # set by the wheel build

__all__ = [
    "Activations",
    "Cache",
    "Comparison",
    "Neighbors",
    "Zoo",
    "built_with_cuda",
    "chance",
    "compare",
    "cuda_available",
    "extract",
    "knn",
    "list_aliases",
    "load_model",
    "load_texts",
    "overlap",
    "zoo",
]
