"""The DeepSpeech2 recipes: LightningCLI parses them (--print_config) and runs one fast_dev_run
step on tiny synthetic manifests (ds2-large swapped for ds2-tiny, which has the same time stride)."""

import contextlib
import io
import json

import numpy as np
import pytest
import soundfile
import torch
import yaml

from zoo import recipes
from zoo.cli import main

CONFIGS = recipes.folder()


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds2speech")
    rng = np.random.default_rng(0)
    entries = []
    for i, text in enumerate(["yes", "go left", "stop now", "no"]):
        soundfile.write(root / f"{i}.wav", (rng.standard_normal(16000) * 0.1).astype(np.float32), 16000)
        entries.append({"audio_filepath": f"{i}.wav", "duration": 1.0, "text": text})
    path = root / "tiny.json"
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    return path


def printed_config(config: str) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(CONFIGS / config), "--print_config"])
    assert exit_.value.code in (0, None)
    return yaml.safe_load(out.getvalue())


@pytest.mark.slow
@pytest.mark.parametrize(
    "config,encoder,tiny",
    [
        ("ds2_demo.yaml", "ds2-demo", []),
        ("ds2_large_librispeech.yaml", "ds2-large", ["--model.init_args.encoder", "ds2-tiny"]),
    ],
)
def test_recipe_prints_and_runs_one_step(config, encoder, tiny, manifest, tmp_path):
    printed = printed_config(config)
    model, data, trainer = printed["model"]["init_args"], printed["data"]["init_args"], printed["trainer"]
    assert model["encoder"] == encoder and data["featurizer"]["kind"] == "spectrogram"
    assert "zoo.callbacks.sortagrad.SortaGrad" in [c["class_path"] for c in trainer["callbacks"]]
    assert trainer["gradient_clip_val"] == 400.0
    if encoder == "ds2-large":  # the paper's optimisation: SGD + Nesterov 0.99, x1/1.2 per epoch
        assert model["optimizer"]["class_path"] == "torch.optim.SGD"
        assert model["optimizer"]["init_args"]["momentum"] == 0.99 and model["optimizer"]["init_args"]["nesterov"]
        assert model["lr_scheduler"]["init_args"]["gamma"] ** 549 == pytest.approx(1 / 1.2, rel=1e-4)
    main(
        [
            "fit",
            "--config",
            str(CONFIGS / config),
            *tiny,
            "--data.init_args.train_manifests",
            f"[{manifest}]",
            "--data.init_args.val_manifests",
            f"[{manifest}]",
            "--data.init_args.test_manifests",
            f"[{manifest}]",  # no split falls back to the synthetic corpus
            "--data.init_args.batch_size",
            "2",
            "--data.init_args.num_workers",
            "0",
            "--trainer.accelerator",
            "cpu",
            "--trainer.devices",
            "1",
            "--trainer.strategy",
            "auto",
            "--trainer.precision",
            "bf16-mixed",
            "--trainer.fast_dev_run",
            "1",
            "--trainer.default_root_dir",
            str(tmp_path),
        ]
    )


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("config", ["ds2_large_librispeech.yaml", "ds2_paper_librispeech.yaml"])
def test_gpu_recipe_runs_as_written_on_a_gpu(config, manifest, tmp_path):
    """The cluster recipes with their own encoder (59M / 100M, cuDNN kernels), precision (16-mixed +
    LossScaling) and DDP strategy, on one GPU: one fast_dev_run step on the tiny manifest."""
    main(
        [
            "fit",
            "--config",
            str(CONFIGS / config),
            "--data.init_args.train_manifests",
            f"[{manifest}]",
            "--data.init_args.val_manifests",
            f"[{manifest}]",
            "--data.init_args.test_manifests",
            f"[{manifest}]",
            "--data.init_args.batch_size",
            "2",
            "--data.init_args.num_workers",
            "0",
            "--trainer.devices",
            "1",
            "--trainer.fast_dev_run",
            "1",
            "--trainer.default_root_dir",
            str(tmp_path),
        ]
    )
