"""Read the course-handout corpus format - an ``.npy`` object array of per-article int arrays -
without running anything from the file.

NumPy stores object arrays as a pickle after the ``.npy`` header, and ``np.load(allow_pickle=True)``
would run whatever that pickle names. Here the pickle stream is read by an unpickler that can build
nothing but NumPy arrays and dtypes (the same idea as ``torch.load(weights_only=True)``): any other
class or function named in the file is refused before it is looked up, so a planted payload never
runs. The result must then be a 1-D array of 1-D integer arrays.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from ..errors import InputError

# (module, name) pairs a NumPy object-array pickle needs; nothing else is ever resolved
_ALLOWED = {(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")}
_ALLOWED |= {(m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")}
_ALLOWED |= {("numpy", "ndarray"), ("numpy", "dtype")}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}")
        return super().find_class(module, name)

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused a persistent id")


def _header(f, path: Path):
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(f)
        if version == (2, 0):
            return np.lib.format.read_array_header_2_0(f)
        return np.lib.format._read_array_header(f, version)   # 3.0 (utf-8 field names)
    except (ValueError, OSError) as e:
        raise InputError(str(path), f"not an .npy file ({e})", "an .npy array of per-article id arrays") from None


def load_articles(path: str | Path) -> list[np.ndarray]:
    """``path`` (an ``.npy`` file) -> list of 1-D int64 arrays, one per article. Accepts an object
    array of integer arrays (the course format) or a plain 1-D/2-D integer array (one article per
    row); refuses everything else with :class:`InputError`.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "train.npy")
        >>> arts = np.empty(2, dtype=object); arts[0] = np.array([1, 2]); arts[1] = np.array([3])
        >>> np.save(p, arts, allow_pickle=True)
        >>> [a.tolist() for a in load_articles(p)]
        [[1, 2], [3]]
    """
    path = Path(path)
    with open(path, "rb") as f:
        shape, _, dtype = _header(f, path)
        if not dtype.hasobject:
            f.seek(0)
            arr = np.load(f, allow_pickle=False)
            if arr.dtype.kind not in "iu" or arr.ndim not in (1, 2):
                raise InputError(str(path), f"array of {arr.dtype} with shape {arr.shape}",
                                 "integer ids: an object array of 1-D articles, or a 1-D/2-D int array")
            return [a.astype(np.int64) for a in (arr[None] if arr.ndim == 1 else arr)]
        try:
            arr = _ArrayUnpickler(io.BytesIO(f.read())).load()
        except Exception as e:   # UnpicklingError, EOFError, anything a hostile stream provokes
            raise InputError(str(path), f"refused ({type(e).__name__}: {str(e)[:120]})",
                             "an object array of integer arrays and nothing else (no other objects are loaded)") from None
    if not isinstance(arr, np.ndarray) or arr.ndim != 1:
        raise InputError(str(path), f"a {type(arr).__name__} after the header", "a 1-D object array of articles")
    out = []
    for k, a in enumerate(arr):
        if not isinstance(a, np.ndarray) or a.dtype.kind not in "iu" or a.ndim != 1:
            kind = a.dtype if isinstance(a, np.ndarray) else type(a).__name__
            raise InputError(f"{path}: article {k}", f"a {kind}", "a 1-D integer array of word ids")
        out.append(a.astype(np.int64))
    return out
