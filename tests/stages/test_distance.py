"""distance: D recomputed here from the stored raw embeddings equals the stored D (Eq. 3-7)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.app.runner import make_stage
from pipeline.method.misalignment import misalignment
from tests.conftest import tiny


def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def test_stored_distance_equals_eq_3_to_7_from_stored_embeddings(full_run):
    config = tiny()
    embed = pl.from_arrow(full_run.features("embed", make_stage("embed", config, full_run).fingerprint).read())
    dist = pl.from_arrow(full_run.features("distance", make_stage("distance", config, full_run).fingerprint).read())
    joined = embed.join(dist, on="image_id")
    assert joined.height == 24 and dist["image_id"].n_unique() == 24
    for row in joined.iter_rows(named=True):
        d_g = unit(row["image_embed"]) - unit(row["text_embed"])
        np.testing.assert_allclose(row["d_global"], d_g, rtol=0, atol=1e-6)
        assert abs(row["cos_global"] - unit(row["image_embed"]) @ unit(row["text_embed"])) < 1e-6
        pairs = list(zip(row["object_image_embeds"], row["object_text_embeds"], strict=True))
        assert row["n_objects"] == len(pairs)
        if pairs:
            d_l = np.mean([unit(i) - unit(t) for i, t in pairs], axis=0)
            cos_l = np.mean([unit(i) @ unit(t) for i, t in pairs])
            np.testing.assert_allclose(row["d_local"], d_l, rtol=0, atol=1e-6)
            assert abs(row["cos_local"] - cos_l) < 1e-6
        else:
            assert row["cos_local"] is None and not np.any(row["d_local"])
    assert np.isfinite(dist["d_global"].to_numpy()).all()
    # the tiny grounder leaves some images without objects and others with several: both branches ran
    assert (dist["n_objects"] == 0).any() and (dist["n_objects"] > 1).any()


def test_zero_objects_rule_and_mean_over_objects():
    rng = np.random.default_rng(1)
    image, text = rng.normal(size=(2, 4)), rng.normal(size=(2, 4))
    objs_i, objs_t = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    out = misalignment(image, text, objs_i, objs_t, np.array([0, 3]))
    assert not out["d_local"][0].any() and np.isnan(out["cos_local"][0])
    expected = np.mean([unit(a) - unit(b) for a, b in zip(objs_i, objs_t, strict=True)], axis=0)
    np.testing.assert_allclose(out["d_local"][1], expected, atol=1e-12)
    assert out["d_global"].shape == (2, 4)
    assert pa.array(out["cos_global"]).type == pa.float64()
