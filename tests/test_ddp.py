"""DDP through Lightning (gloo, 2 CPU processes, launched by `zoo fit`): disjoint samplers, metrics reduced across ranks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ZOO = Path(sys.executable).parent / "zoo"


@pytest.mark.slow
def test_two_process_ddp_disjoint_data_and_synced_metrics(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(TESTS), "ZOO_TOY_REPORT_DIR": str(tmp_path)}
    out = subprocess.run(
        [str(ZOO), "fit", "--model", "zoo_toys.DDPProbe", "--model.dropout", "0", "--data", "zoo_toys.IndexedToyData",
         "--seed_everything", "0", "--trainer.accelerator", "cpu", "--trainer.devices", "2",
         "--trainer.strategy", "ddp", "--trainer.max_epochs", "1", "--trainer.logger", "false",
         "--trainer.enable_checkpointing", "false", "--trainer.num_sanity_val_steps", "0",
         f"--trainer.default_root_dir={tmp_path}"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in reports] == [2, 2]
    train = [set(r["seen_train"]) for r in reports]
    # DistributedSampler: 16 training samples, 8 per rank, disjoint and covering the set
    assert [len(r["seen_train"]) for r in reports] == [8, 8]
    assert not train[0] & train[1] and train[0] | train[1] == set(range(16))
    val = [set(r["seen_val"]) for r in reports]
    assert not val[0] & val[1] and val[0] | val[1] == set(range(20))
    # the logged torchmetrics value is the mean over BOTH ranks' samples, not the local one
    global_mse = sum(r["local_sq"] for r in reports) / sum(r["local_n"] for r in reports)
    local = [r["local_sq"] / r["local_n"] for r in reports]
    for r in reports:
        assert abs(r["val_mse"] - global_mse) < 1e-5 * max(1.0, global_mse)
    assert abs(local[0] - local[1]) > 1e-4  # so the check above could tell a local value from the reduced one
