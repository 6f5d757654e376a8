"""`make gpu-check` runs end to end on the CPU in its small mode, so it cannot rot before a GPU is lent."""

from __future__ import annotations

import json

from benchmarks import gpu_check


def test_the_gpu_check_runs_every_step_on_small_models(tmp_path, capsys):
    gpu_check.main(
        ["--size", "small", "--images", "4", "--device", "cpu", "--no-record",
         "--data-dir", str(tmp_path / "data"), "--models-dir", str(tmp_path / "models")]
    )
    out = capsys.readouterr().out.splitlines()
    assert json.loads(out[-1]) == {"figures": len(out) - 1}
    names = [line.split("  ")[0] for line in out[:-1]]
    for stage in ("caption", "ground", "embed", "distance"):
        assert any(n.startswith(f"gpu-check {stage} (") for n in names), stage
    for variant in ("caption batch 16", "caption batch 64", "ground float32", "ground tf32", "ground bfloat16",
                    "ground float32 unpadded", "embed batch 512 crops"):
        assert any(variant in n for n in names), variant
    dask = next(line for line in out if line.startswith("gpu-check dask"))
    assert "yes" in dask.split("target")[1] and "same_captions=True" in dask, dask
    ground = next(line for line in out if line.startswith("gpu-check ground ("))
    assert "images_per_ground_call=" in ground
