"""Reproducibility across commits and CPUs. Golden runs (tests/golden.py): training as a whole
computes what it computed when the rows were written, within another CPU's rounding, and the
comparison fails for small changes to training. Checkpoints record the kernels that rounded them."""

import os
import platform
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tests import golden


@pytest.mark.parametrize("name", sorted(golden.CASES))
def test_each_case_trains_as_its_golden_rows(tmp_path, name):
    rows = golden.run_case(golden.CASES[name], tmp_path / name)
    found = []
    for table, frame in rows.items():
        found += golden.differences(frame, pd.read_csv(golden.golden_path(name, table)), f"{name}.{table}")
    assert not found, ("training changed; if on purpose, regenerate with python -m tests.golden and say why in "
                       "the commit:\n" + "\n".join(found))


@pytest.mark.parametrize("name, change", [("hopper", {"lr": 3.03e-4}), ("hopper", {"gamma": 0.991}),
                                          ("hopper", {"obs_clip": 5.0}), ("hopper", {"init_log_std": -0.495}),
                                          ("dmc", {"gae_lambda": 0.951})])
def test_a_small_change_to_training_fails_the_comparison(tmp_path, name, change):
    rows = golden.run_case(golden.CASES[name].replace(**change), tmp_path / name)
    found = golden.differences(rows["progress"], pd.read_csv(golden.golden_path(name, "progress")), "progress")
    assert found and all(line.startswith("progress.") for line in found)


def test_differences_allows_rounding_and_refuses_the_rest():
    g = pd.DataFrame(dict(global_step=[1, 2], episodic_return=[10.0, np.nan], policy_loss=[-0.5, 0.25],
                          clipfrac=[0.1, 0.2]))
    assert golden.differences(g.copy(), g, "t") == []
    rounded = g.copy()
    rounded["policy_loss"] = [-0.5 * (1 + 1e-5), 0.25 + 1e-6]  # kernel rounding, far below RTOL
    rounded["clipfrac"] = [0.1 + 1 / 256, 0.2]  # one sample over the clip edge
    assert golden.differences(rounded, g, "t") == []

    moved = g.copy()
    moved["policy_loss"] = [-0.5, 0.25 + 0.01]  # 1% of the column's scale 0.5, 4% of the value
    (line,) = golden.differences(moved, g, "t")
    assert line.startswith("t.policy_loss: 1 row(s) differ, first row 1")
    counted = g.copy()
    counted["global_step"] = [1, 3]  # a count is exact
    assert golden.differences(counted, g, "t") == ["t.global_step: 1 row(s) differ, first row 1: 3.0 != 2.0"]
    missing = g.copy()
    missing["episodic_return"] = [10.0, 1.0]  # NaN (no episode yet) against a value
    assert len(golden.differences(missing, g, "t")) == 1
    assert golden.differences(g.iloc[:1], g, "t") == ["t: 1 rows != 2"]
    assert golden.differences(g.drop(columns=["clipfrac"]), g, "t")[0].startswith("t: columns")


AVX2 = {"OPENBLAS_CORETYPE": "Haswell", "ATEN_CPU_CAPABILITY": "avx2",
        "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR"}


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the AVX2 kernels are x86's")
def test_kernels_names_what_this_process_computes_with_not_what_was_built():
    from ppo_cli.checkpoint import kernels

    here = kernels()
    assert here.startswith("numpy ") and ", OpenBLAS " in here and ", torch " in here
    if "torch AVX2" not in here and "torch AVX512" not in here:
        pytest.skip(f"a CPU without AVX2 ({here}): nothing to pin")
    env = {**os.environ, **AVX2}
    pinned = subprocess.run([sys.executable, "-c", "from ppo_cli.checkpoint import kernels; print(kernels())"],
                            env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert pinned == "numpy X86_V3, OpenBLAS Haswell, torch AVX2"


def test_a_resume_on_other_kernels_says_it_will_not_be_bit_for_bit(tmp_path, monkeypatch, caplog):
    import torch

    from ppo_cli import checkpoint, trainer
    from ppo_cli.checkpoint import save_checkpoint
    from tests.test_trainer import small

    config = small(total_steps=512)
    trainer.train(config, tmp_path)
    with caplog.at_level("WARNING", logger="ppo_cli.trainer"):
        trainer.train(config.replace(total_steps=768), tmp_path, resume=True)  # same kernels: silent
    assert "other CPU kernels" not in caplog.text

    here = checkpoint.kernels()
    other = "numpy SSE3, OpenBLAS Prescott, torch DEFAULT"  # unlike any machine these tests run on
    assert other != here
    monkeypatch.setattr(checkpoint, "kernels", lambda: other)
    with caplog.at_level("WARNING", logger="ppo_cli.trainer"):
        result = trainer.train(config.replace(total_steps=1024), tmp_path, resume=True)
    assert result.status == "finished" and result.global_step == 1024
    (line,) = [r.getMessage() for r in caplog.records if "other CPU kernels" in r.getMessage()]
    assert f"({other}; it was trained with {here})" in line

    steps = 1024
    for versions in ({"torch": "2.13.0"}, 5, {"kernels": 5}):  # from before kernels were recorded; crafted
        state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
        state["versions"] = versions
        save_checkpoint(tmp_path / "checkpoint.pt", state)
        caplog.clear()
        steps += 256
        with caplog.at_level("WARNING", logger="ppo_cli.trainer"):
            assert trainer.train(config.replace(total_steps=steps), tmp_path, resume=True).global_step == steps
        assert "other CPU kernels" not in caplog.text
