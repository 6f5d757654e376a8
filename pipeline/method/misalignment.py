"""The misalignment vectors of Eq. 3-7, for a batch, from raw (unnormalised) CLIP embeddings.

    D_g   = I_0/|I_0| - T_0/|T_0|                       (Eq. 4)
    D_l^i = I_i/|I_i| - T_i/|T_i|,  i = 1..n            (Eq. 6)
    D_l   = (1/n) sum_i D_l^i                            (Eq. 7)
    cos_global = <I_0/|I_0|, T_0/|T_0|>;  cos_local = (1/n) sum_i <I_i/|I_i|, T_i/|T_i|>

Zero objects (n = 0): D_l is the zero vector and cos_local is NaN (stored as null), so that
D = w1*D_g + w2*D_l (Eq. 8, formed by the head) falls back to w1*D_g. Arithmetic is float64.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays zero)."""
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def object_cosines(image_embeds: list | None, text_embeds: list | None) -> list[float]:
    """Cosine of each object crop's embedding with its phrase's (the terms cos_local averages)."""
    pairs = zip(image_embeds or [], text_embeds or [], strict=False)
    return [float(unit(np.asarray(i, dtype=np.float64)) @ unit(np.asarray(t, dtype=np.float64))) for i, t in pairs]


def vectors(column: pa.ChunkedArray | pa.Array, dim: int) -> np.ndarray:
    """A fixed-size-list column as an (n, dim) float64 array (no per-row Python objects)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float64)


def fixed_size(x: np.ndarray, dim: int) -> pa.FixedSizeListArray:
    """(n, dim) rows as a float32 fixed-size-list column (how vectors are stored)."""
    return pa.FixedSizeListArray.from_arrays(pa.array(x.astype(np.float32).ravel()), dim)


def misalignment(
    image: np.ndarray, text: np.ndarray, obj_image: np.ndarray, obj_text: np.ndarray, counts: np.ndarray
) -> dict[str, np.ndarray]:
    """Eq. 3-7 for a batch: global (n, dim) pairs and objects flattened with per-row `counts`."""
    ui, ut = unit(image), unit(text)
    d_global = ui - ut
    cos_global = np.einsum("ij,ij->i", ui, ut)
    oi, ot = unit(obj_image), unit(obj_text)
    d_obj = oi - ot
    cos_obj = np.einsum("ij,ij->i", oi, ot)
    rows = np.repeat(np.arange(len(counts)), counts)
    d_local = np.zeros_like(d_global)
    np.add.at(d_local, rows, d_obj)
    cos_sum = np.bincount(rows, weights=cos_obj, minlength=len(counts))
    with np.errstate(invalid="ignore", divide="ignore"):
        d_local /= np.maximum(counts, 1)[:, None]
        cos_local = np.where(counts > 0, cos_sum / np.maximum(counts, 1), np.nan)
    return {"d_global": d_global, "d_local": d_local, "cos_global": cos_global, "cos_local": cos_local}
