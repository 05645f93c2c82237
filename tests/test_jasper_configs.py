"""The Jasper / QuartzNet recipes: LightningCLI parses them (--print_config) and runs one
fast_dev_run step on tiny synthetic manifests; the big encoders' parameter counts are the papers'."""

import contextlib
import io
import json

import numpy as np
import pytest
import soundfile
import torch
import yaml

import zoo
from zoo import recipes
from zoo.cli import main

CONFIGS = recipes.folder()
RECIPES = {  # config -> (encoder, parameter count)
    "jasper_demo.yaml": ("jasper-demo", None),
    "jasper_english.yaml": ("jasper-demo", None),
    "jasper10x5dr_librispeech.yaml": ("jasper-10x5dr", 332_632_349),
    "quartznet15x5_librispeech.yaml": ("quartznet-15x5", 18_924_381),
    "quartznet15x5_voices_gpu.yaml": ("quartznet-15x5", 18_924_381),
}
#: The cluster recipes: DDP, fp16 with loss scaling, batch 32 per GPU (the papers' setups).
CLUSTER = {"jasper10x5dr_librispeech.yaml", "quartznet15x5_librispeech.yaml"}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("speech")
    rng = np.random.default_rng(0)
    entries = []
    for i, text in enumerate(["yes", "go left", "stop now", "no"]):
        wave = (rng.standard_normal(16000) * 0.1).astype(np.float32)
        soundfile.write(root / f"{i}.wav", wave, 16000)
        entries.append({"audio_filepath": f"{i}.wav", "duration": 1.0, "text": text})
    path = root / "tiny.json"
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("config", sorted(RECIPES))
def test_recipe_prints_and_runs_one_step(config, manifest, tmp_path):
    encoder, count = RECIPES[config]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(CONFIGS / config), "--print_config"])
    assert exit_.value.code in (0, None)
    printed = yaml.safe_load(out.getvalue())
    assert printed["model"]["init_args"]["encoder"] == encoder
    assert printed["model"]["init_args"]["optimizer"]["class_path"].startswith(("zoo.optim.", "torch.optim."))
    if count is not None:
        assert zoo.count_parameters(encoder) == count
    if config in CLUSTER:
        assert printed["trainer"]["precision"] == "16-mixed" and printed["trainer"]["strategy"] == "ddp"
        assert printed["data"]["init_args"]["batch_size"] == 32
    elif count is not None:  # the one-GPU many-voice recipe: bf16, a time budget the decay is fitted to
        assert printed["trainer"]["precision"] == "bf16-mixed" and printed["trainer"]["max_time"] == "00:00:10:00"
        assert printed["data"]["init_args"]["corpus"]["text"] == "english"
        callbacks = [c["class_path"] for c in printed["trainer"]["callbacks"]]
        assert "zoo.callbacks.DecayOverTimeBudget" in callbacks
    # one step on tiny data: the big encoders are swapped for jasper-tiny (same stride 2)
    override = [] if count is None else ["--model.init_args.encoder", "jasper-tiny"]
    main(
        [
            "fit",
            "--config",
            str(CONFIGS / config),
            *override,
            "--data.init_args.train_manifests",
            f"[{manifest}]",
            "--data.init_args.val_manifests",
            f"[{manifest}]",
            # every split given: nothing falls back to building the (large) embedded corpus
            "--data.init_args.test_manifests",
            f"[{manifest}]",
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
@pytest.mark.parametrize("config", [c for c, (_, count) in sorted(RECIPES.items()) if count is not None])
def test_gpu_recipe_runs_as_written_on_a_gpu(config, manifest, tmp_path):
    """The GPU recipes with their own encoder (333M / 19M), precision (the cluster recipes: 16-mixed +
    LossScaling, DDP strategy) on one GPU: one fast_dev_run step on the tiny manifest."""
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


@pytest.mark.slow
@pytest.mark.parametrize(
    "recipe, encoder, on_this_machine",
    [
        (None, "jasper-demo", []),
        ("ds2_demo.yaml", "ds2-demo", []),
        # the GPU recipe on the CPU, its 19M-parameter encoder swapped for a tiny one
        ("quartznet15x5_voices_gpu.yaml", "jasper-tiny", ["--trainer.accelerator", "cpu"]),
    ],
)
def test_speech_demo_end_to_end_on_a_tiny_corpus(tmp_path, recipe, encoder, on_this_machine):
    """`zoo demo`'s speech stages (`--recipe` for DeepSpeech2, and the GPU many-voice recipe on the CPU with a tiny
    encoder): train (seconds), test greedy + beam, export, reload, transcribe."""
    from rich.console import Console

    from zoo.commands.speech_demo import run
    from zoo.datamodules.synthetic_speech import SyntheticCorpusConfig

    corpus = SyntheticCorpusConfig(train_utterances=8, val_utterances=3, test_utterances=3, cache_dir=str(tmp_path))
    out = tmp_path / "demo"
    overrides = [
        "--trainer.val_check_interval",
        "1.0",
        "--trainer.check_val_every_n_epoch",
        "1",
        "--trainer.max_epochs",
        "1",
        "--data.init_args.batch_size",
        "4",
        "--data.init_args.num_workers",
        "0",
        "--model.init_args.encoder",
        encoder,
        *on_this_machine,
    ]
    recipe_file = CONFIGS / recipe if recipe else None
    assert run("commands", corpus, out, 0.5, Console(width=120), overrides, recipe=recipe_file) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["recipe"] == str(recipe_file or CONFIGS / "jasper_demo.yaml")
    assert {"test/wer", "test/cer", "test/wer_beam", "test/cer_beam"} <= set(results["metrics"])
    assert results["steps"] >= 1 and results["rtf"] > 0
    assert (out / encoder / "model.safetensors").is_file() and (out / "words.arpa").is_file()
    assert (out / "wer_vs_minutes.csv").is_file()
    recognizer = zoo.load(out / encoder)
    assert recognizer.encoder.config == zoo.registry.get_spec(encoder).config
