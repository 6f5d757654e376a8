"""perturb: deterministic derived images of the requested strength, with their own ids, that reuse
the cache on re-run; ablations and robustness computed from the cache."""

from __future__ import annotations

import io

import numpy as np
import polars as pl
import pytest
from PIL import Image

from pipeline.app.runner import make_stage, run_stage
from pipeline.engine.imageio import decode
from pipeline.method.perturbations import GRID, apply
from pipeline.models import load_counts
from tests.conftest import tiny


@pytest.fixture
def photo():
    from pipeline.app.demo import scene

    return Image.fromarray((scene(np.random.default_rng(5)) * 255).round().astype(np.uint8))


def rounded_noise_std(sigma: float) -> float:
    """Std of N(0, sigma) noise on [0, 1] pixels after rounding to 8 bits (exact for integer-level inputs)."""
    from scipy.stats import norm

    s = sigma * 255
    k = np.arange(-50, 51)
    p = norm.cdf((k + 0.5) / s) - norm.cdf((k - 0.5) / s)
    return float(np.sqrt((k**2 * p).sum()) / 255)


def test_noise_has_the_asked_sigma_and_is_deterministic(photo):
    base = np.asarray(photo, dtype=np.float64) / 255
    for sigma in GRID["noise"]:
        data, ext = apply(photo, "noise", sigma, seed=0, source_id="abc")
        assert ext == "png" and data == apply(photo, "noise", sigma, seed=0, source_id="abc")[0]
        assert data != apply(photo, "noise", sigma, seed=1, source_id="abc")[0]
        noisy = np.asarray(Image.open(io.BytesIO(data)), dtype=np.float64) / 255
        diff = (noisy - base)[(base > 0.05) & (base < 0.95)]  # away from clipping
        assert diff.std() == pytest.approx(rounded_noise_std(sigma), rel=0.1)


def test_blur_lowers_high_frequency_energy_more_with_sigma(photo):
    def high_freq(img):
        gray = np.asarray(img.convert("L"), dtype=np.float64)
        return np.abs(np.diff(gray, axis=0)).mean() + np.abs(np.diff(gray, axis=1)).mean()

    energies = [high_freq(Image.open(io.BytesIO(apply(photo, "blur", s, 0, "x")[0]))) for s in GRID["blur"]]
    assert high_freq(photo) > energies[0] > energies[1] > energies[2]


def test_jpeg_files_report_the_asked_quality(photo):
    for quality in GRID["jpeg"]:
        data, ext = apply(photo, "jpeg", quality, 0, "x")
        _, info = decode(data)
        assert ext == "jpg" and info.format == "JPEG" and info.jpeg_quality == quality


def test_derived_images_get_their_own_ids_flow_through_the_stages_and_reuse_the_cache(tmp_path, image_root):
    from pipeline.engine.store import Store

    store = Store(tmp_path)
    config = tiny()
    run_stage("ingest", config, store, inputs=[image_root])
    sources = derive(config, store, ("jpeg", "blur"), split="test")
    n_test = pl.from_arrow(store.manifest.read()).filter(pl.col("split") == "test").height
    assert len(sources) == 6 * n_test and n_test > 0
    assert run_stage("ingest", config, store, sources=sources).ok == len(sources)
    m = pl.from_arrow(store.manifest.read())
    derived = m.filter(pl.col("perturbation").is_not_null())
    assert derived.height == len(sources) and derived["image_id"].n_unique() == len(sources)
    assert set(derived["source_id"].to_list()) <= set(m.filter(pl.col("perturbation").is_null())["image_id"].to_list())
    joined = derived.join(m.select("image_id", "label", "generator"), left_on="source_id", right_on="image_id")
    assert (joined["label"] == joined["label_right"]).all() and (joined["generator"] == joined["generator_right"]).all()
    assert set(derived.filter(pl.col("perturbation") == "jpeg:25")["jpeg_quality"].to_list()) == {25}
    for name in ("caption", "ground", "embed", "distance"):
        assert run_stage(name, config, store).ok == m.height
    # again: the same files (and ids) are found, nothing is written or computed
    again = derive(config, store, ("jpeg", "blur"), split="test")
    assert [s.path for s in again] == [s.path for s in sources]
    assert run_stage("ingest", config, store, sources=again).todo == 0
    assert all(run_stage(name, config, store).todo == 0 for name in ("caption", "ground", "embed", "distance"))


def test_ablations_and_robustness_run_from_the_cache_without_a_model_stage(full_run, tmp_path):
    import shutil

    from pipeline.app.report import robustness
    from pipeline.engine.config import resolve
    from pipeline.engine.store import Store
    from pipeline.method.heads import FittedHead

    shutil.copytree(full_run.root, tmp_path / "data")
    store = Store(tmp_path / "data")
    before = load_counts()
    for overrides in ({"features": "global"}, {"features": "local"}, {"train_generators": ["toygan"]}):
        config = resolve("tiny", {"fit": overrides}, {"device": "cpu"})
        stats = run_stage("fit", config, store)
        assert stats.ok > 0
        head = FittedHead(make_stage("fit", config, store).model_dir)
        assert head.fit_cfg.features == overrides.get("features", "both")
    subset = make_stage("fit", resolve("tiny", {"fit": {"train_generators": ["toygan"]}}), store)
    assert set(subset.vectors("train")["generator"].to_list()) == {"toygan"}
    assert load_counts() == before  # no model stage ran
    assert robustness(tiny(), store, head) is None  # no derived images yet


def derive(config, store, kinds, split):
    """The perturb job's derived sources (what `item perturb` ingests)."""
    job = make_stage("perturb", config, store, kinds=kinds, split=split)
    job.run()
    return job.sources


def test_fig_4s_protocol_perturbs_one_generators_test_images_and_noise_var_is_its_own_kind(tmp_path, image_root):
    """The paper perturbed only the training generator's test images (ProGAN; here toygan); by default
    every generator's are. `noise_var` (the noise levels read as variances) is labelled apart."""
    from pipeline.engine.errors import UsageError
    from pipeline.engine.store import Store

    store = Store(tmp_path)
    config = tiny()
    run_stage("ingest", config, store, inputs=[image_root])
    test = pl.from_arrow(store.manifest.read()).filter(pl.col("split") == "test")
    job = make_stage("perturb", config, store, kinds=("noise_var",), generators=("toygan",))
    job.run()
    toygan = test.filter(pl.col("generator") == "toygan")
    assert 0 < toygan.height < test.height
    assert {s.generator for s in job.sources} == {"toygan"} and len(job.sources) == 3 * toygan.height
    assert sorted({s.perturbation for s in job.sources}) == ["noise_var:0.001", "noise_var:0.005", "noise_var:0.01"]
    every = make_stage("perturb", config, store, kinds=("noise",), out=tmp_path / "every")
    every.run()
    assert len(every.sources) == 3 * test.height
    same = {(s.source_id, s.perturbation.split(":")[1]) for s in every.sources}
    assert {(s.source_id, s.perturbation.split(":")[1]) for s in job.sources} <= same
    assert not {s.path for s in job.sources} & {s.path for s in every.sources}  # other files: other images
    with pytest.raises(UsageError, match="no labelled test image of generator"):
        make_stage("perturb", config, store, generators=("progan",)).run()
