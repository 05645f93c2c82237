"""The exported SpeechRecognizer carries its decoder: lexicon + ARPA LM + tuned beam settings in the
folder, a zoo model card, beam search by default after zoo.load (folder or Hub cache), and the same
WER on a test set as measured before export."""

import json
import random
import shutil
from pathlib import Path

import jiwer
import numpy as np
import pytest
import pytorch_lightning as pl
import soundfile
import torch

import zoo
from zoo import hub
from zoo.cli import main as zoo_main
from zoo.datamodules.speech import SpeechDataModule
from zoo.lightning_modules.ctc_speech_recognizer import CTCSpeechRecognizer
from zoo.speech.decoding import BeamSearchConfig, tune_beam_search
from zoo.speech.ngram import build_arpa
from zoo.speech.recognizer import SpeechRecognizer

WORDS = ["yes", "no", "stop", "go", "left", "right", "up", "down"]


def write_manifest(root, n: int, seed: int):
    """``n`` noise clips (0.6-1.4 s) with random one-to-three-word transcripts."""
    rng, noise = random.Random(seed), np.random.default_rng(seed)
    lines = []
    for i in range(n):
        seconds = round(rng.uniform(0.6, 1.4), 2)
        audio = root / f"{seed}_{i}.wav"
        soundfile.write(audio, (noise.standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32), 16000)
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))
        lines.append(json.dumps({"audio_filepath": str(audio), "duration": seconds, "text": text}))
    path = root / f"manifest{seed}.json"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """A jasper-tiny module with large random output weights (so greedy transcripts are long strings
    of letters), beam search tuned on a validation set as `zoo demo` does, and its test WERs."""
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    module = CTCSpeechRecognizer("jasper-tiny", featurizer={}, tokenizer={})
    with torch.no_grad():
        module.encoder.decoder.weight.normal_(0, 2.0, generator=torch.Generator().manual_seed(1))
    data = SpeechDataModule(
        val_manifests=[str(write_manifest(root, 6, 1))],
        test_manifests=[str(write_manifest(root, 8, 2))],
        time_reduction=2,
        batch_size=4,
        num_workers=0,
    )
    data.setup("validate")
    data.setup("test")
    texts = [u.text for u in data.data["val"].utterances]
    (root / "source").mkdir()
    words = root / "source" / "words.txt"
    words.write_text("\n".join(WORDS) + "\n")
    arpa = build_arpa(texts * 3, root / "source" / "words.arpa", order=3)
    emissions, references = [], []
    module.eval()
    with torch.no_grad():
        for batch in data.val_dataloader():
            emissions.append(module(batch["features"], batch["feature_lengths"]))
            references += batch["texts"]
    tuned, _ = tune_beam_search(
        emissions,
        references,
        module.tokenizer.labels,
        BeamSearchConfig(lexicon=words, lm=arpa, beam_size=16),
        lm_weights=(0.5, 2.0),
        word_scores=(0.0, 3.0),
        blank=module.tokenizer.blank,
    )
    module.set_beam_search(tuned)
    tester = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    metrics = tester.test(module, datamodule=data, verbose=False)[0]
    module.before = {}  # audio path -> the module's beam and greedy transcripts before export
    with torch.no_grad():
        for batch in data.test_dataloader():
            log_probs, lengths = module(batch["features"], batch["feature_lengths"])
            for path, beam, greedy in zip(
                batch["ids"],
                module.beam_decoder()(log_probs, lengths),
                module.greedy_texts(log_probs, lengths),
                strict=True,
            ):
                module.before[path] = (beam, greedy)
    return module, data, tuned, metrics, root


def test_export_folder_holds_the_decoder_and_a_zoo_model_card(measured, tmp_path):
    module, _, tuned, metrics, _ = measured
    info = hub.CardInfo(
        title="tiny",
        metrics={"test_wer_beam": metrics["test/wer_beam"]},
        datasets=["synthetic-speech"],
        command="zoo demo --minutes 1",
        steps=0,
    )
    folder = hub.export(module.to_pipeline(), tmp_path / "rec", info, load_name="org/tiny")
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "config.json",
        "lexicon.txt",
        "lm.arpa",
        "model.safetensors",
    ]
    assert (folder / "lexicon.txt").read_text() == Path(tuned.lexicon).read_text()
    assert (folder / "lm.arpa").read_text() == Path(tuned.lm).read_text()
    config = json.loads((folder / "config.json").read_text())
    assert config["assets"] == ["lexicon.txt", "lm.arpa"]
    assert config["beam_search"] == {
        **config["beam_search"],
        "lexicon": "lexicon.txt",
        "lm": "lm.arpa",
        "lm_weight": tuned.lm_weight,
        "word_score": tuned.word_score,
        "beam_size": 16,
    }
    card = (folder / "README.md").read_text()
    for expected in [
        "## Decoding",
        "`lexicon.txt`, 8 words",
        "word 3-gram Kneser–Ney",
        "beam size 16",
        f"LM weight {tuned.lm_weight:g}",
        f"word score {tuned.word_score:g}",
        "--greedy",
        "Trained with: `zoo demo --minutes 1`",
        "| test_wer_beam |",
        "espeak-ng",
        'zoo.load("org/tiny")',
    ]:
        assert expected in card, expected
    assert "More Information Needed" not in card
    # the plain save_pretrained of to_pipeline() writes the same files and a zoo card, not the mixin's
    module.to_pipeline().save_pretrained(tmp_path / "plain")
    assert {"lexicon.txt", "lm.arpa"} <= {p.name for p in (tmp_path / "plain").iterdir()}
    plain = (tmp_path / "plain" / "README.md").read_text()
    assert "## Decoding" in plain and "More Information Needed" not in plain
    # ... reporting what the module's trainer measured (it ran the test set)
    assert f"| test/wer_beam | {metrics['test/wer_beam']:.6g} |" in plain


def reloaded_transcripts(recognizer, data, **kwargs):
    utterances = data.data["test"].utterances
    return [t.text for t in recognizer.transcribe([u.audio_filepath for u in utterances], **kwargs)], [
        u.text for u in utterances
    ]


def test_reloaded_export_decodes_the_test_set_at_the_measured_wer(measured, tmp_path):
    module, data, tuned, metrics, root = measured
    folder = hub.export(module.to_pipeline(), tmp_path / "rec")
    shutil.move(root / "source", root / "moved")  # the folder alone must be enough
    try:
        recognizer = zoo.load(folder)
        assert isinstance(recognizer, SpeechRecognizer)
        assert recognizer.beam_search.lm == str(folder / "lm.arpa")
        assert recognizer.beam_search.lm_weight == tuned.lm_weight
        beams, references = reloaded_transcripts(recognizer, data)
        greedy, _ = reloaded_transcripts(recognizer, data, decoder="greedy")
    finally:
        shutil.move(root / "moved", root / "source")
    paths = [u.audio_filepath for u in data.data["test"].utterances]
    assert beams == [module.before[p][0] for p in paths] and greedy == [module.before[p][1] for p in paths]
    # torchmetrics' WER is float32
    assert jiwer.wer(references, beams) == pytest.approx(metrics["test/wer_beam"], abs=1e-7)
    assert jiwer.wer(references, greedy) == pytest.approx(metrics["test/wer"], abs=1e-7)
    assert metrics["test/wer_beam"] != pytest.approx(metrics["test/wer"])
    assert all(w in set(WORDS) for b in beams for w in b.split())
    with pytest.raises(ValueError, match="decoder must be one of"):
        recognizer.transcribe(np.zeros(16000, dtype=np.float32), decoder="viterbi")
    recognizer.set_beam_search(None)
    with pytest.raises(ValueError, match="no beam-search configuration"):
        recognizer.transcribe(np.zeros(16000, dtype=np.float32), decoder="beam")


def test_hub_snapshot_brings_the_decoder_files(measured, tmp_path, monkeypatch):
    from test_hub import fake_hf_cache

    module, data, _, metrics, _ = measured
    folder = hub.export(module.to_pipeline(), tmp_path / "rec")
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    sha = "89abcdef0123456789abcdef0123456789abcdef"
    snapshot = fake_hf_cache(cache, "org/tiny-rec", folder, sha, files=[p.name for p in folder.iterdir()])
    recognizer = zoo.load("org/tiny-rec")
    assert recognizer.beam_search.lexicon == str(snapshot / "lexicon.txt")
    beams, references = reloaded_transcripts(recognizer, data)
    assert jiwer.wer(references, beams) == pytest.approx(metrics["test/wer_beam"], abs=1e-7)
    # the mixin's own from_pretrained with a repo id fetches the assets through hf_hub_download
    direct = SpeechRecognizer.from_pretrained("org/tiny-rec", cache_dir=str(cache))
    assert direct.beam_search.lm == str(snapshot / "lm.arpa")
    # a snapshot whose LM is missing: one clear error naming the file
    fake_hf_cache(cache, "org/no-lm", folder, sha, files=["config.json", "model.safetensors", "lexicon.txt"])
    with pytest.raises(zoo.pipeline.PipelineLoadError, match="lm.arpa"):
        zoo.load("org/no-lm")


def test_zoo_transcribe_uses_the_exported_decoder_unless_greedy(measured, tmp_path, capsys):
    module, data, _, _, _ = measured
    folder = hub.export(module.to_pipeline(), tmp_path / "rec")
    files = [u.audio_filepath for u in data.data["test"].utterances[:3]]
    recognizer = zoo.load(folder, fuse=True)  # as zoo transcribe does by default
    outputs = {}
    for flags, decoder in (([], "beam"), (["--greedy"], "greedy")):
        assert zoo_main(["transcribe", "--model", str(folder), *flags, *files]) == 0
        out = capsys.readouterr().out
        assert "Loading weights" not in out  # the Hub mixin's print, skipped for local folders
        lines = [line.split("\t") for line in out.splitlines() if "\t" in line]
        outputs[decoder] = [text for _, text in lines]
        assert outputs[decoder] == [t.text for t in recognizer.transcribe(files, decoder=decoder)]
    assert outputs["beam"] != outputs["greedy"]
    (folder / "lm.arpa").unlink()  # a folder whose decoder file is missing: one line naming it
    assert zoo_main(["transcribe", "--model", str(folder), *files]) == 1
    error = capsys.readouterr().err
    assert "lm.arpa" in error and len(error.strip().splitlines()) == 1


def save_checkpoint(module, data, path):
    """The module as a `zoo fit` checkpoint (hyper_parameters naming the class)."""
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.test(module, datamodule=data, verbose=False)
    trainer.save_checkpoint(path)
    raw = torch.load(path, weights_only=True)
    raw["hyper_parameters"]["_class_path"] = f"{CTCSpeechRecognizer.__module__}.CTCSpeechRecognizer"
    torch.save(raw, path)
    return path


def test_publish_checkpoint_with_its_decoder(measured, tmp_path, monkeypatch):
    module, data, tuned, _, _ = measured
    checkpoint = save_checkpoint(module, data, tmp_path / "tiny.ckpt")
    folder = tmp_path / "published"
    assert (
        zoo_main(
            [
                "publish",
                str(checkpoint),
                "--repo",
                "org/tiny",
                "--dry-run",
                "--export-dir",
                str(folder),
                "--lexicon",
                tuned.lexicon,
                "--lm",
                tuned.lm,
                "--lm-weight",
                str(tuned.lm_weight),
                "--word-score",
                str(tuned.word_score),
                "--beam-size",
                "16",
                "--command",
                "zoo fit --config tiny.yaml",
                "--dataset",
                "synthetic-speech",
            ]
        )
        == 0
    )
    card = (folder / "README.md").read_text()
    assert "Trained with: `zoo fit --config tiny.yaml`" in card and "## Decoding" in card
    beams, _ = reloaded_transcripts(zoo.load(folder), data)
    assert beams == [module.before[u.audio_filepath][0] for u in data.data["test"].utterances]
    # pushing the folder uploads the decoder's files too
    uploaded = []

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=None, exist_ok=False):
            pass

        def upload_folder(self, repo_id, folder_path, revision=None, allow_patterns=None, commit_message=None):
            uploaded.extend(allow_patterns)
            return "https://huggingface.co/org/tiny/commit/1"

    monkeypatch.setattr(hub, "HfApi", FakeApi)
    assert zoo_main(["publish", str(folder), "--repo", "org/tiny"]) == 0
    assert sorted(uploaded) == ["README.md", "config.json", "lexicon.txt", "lm.arpa", "model.safetensors"]
    (folder / "lm.arpa").unlink()
    assert zoo_main(["publish", str(folder), "--repo", "org/tiny"]) == 1
    assert (
        zoo_main(
            [
                "publish",
                str(checkpoint),
                "--repo",
                "org/tiny",
                "--dry-run",
                "--export-dir",
                str(tmp_path / "x"),
                "--lm",
                str(tmp_path / "missing.arpa"),
            ]
        )
        == 1
    )


def test_demo_exports_the_tuned_decoder_and_reports_the_reloaded_wer(measured, tmp_path):
    import io
    from types import SimpleNamespace

    from rich.console import Console

    from zoo.commands import speech_demo
    from zoo.datamodules.synthetic_speech import SyntheticCorpusConfig

    module, data, tuned, metrics, _ = measured
    checkpoint = save_checkpoint(module, data, tmp_path / "demo.ckpt")
    trainer = SimpleNamespace(
        lightning_module=SimpleNamespace(hparams=SimpleNamespace(encoder="jasper-tiny")),
        global_step=12,
        current_epoch=1,
    )
    recipe = speech_demo.recipe_path("commands")
    info = speech_demo.card_info(
        "commands", SyntheticCorpusConfig(test_variants=["flite:slt"]), recipe, trainer, metrics, 2.0
    )
    assert info.command == "zoo demo --text commands --minutes 2"
    assert info.datasets == ["synthetic-speech", "flite-speech", "voice-commands"]
    out = io.StringIO()
    folder = tmp_path / "jasper-tiny"
    result = speech_demo.export_and_transcribe(
        checkpoint, data, folder, Console(file=out, width=200), tuned, info, metrics
    )
    assert result["export_test_wer"] == pytest.approx(metrics["test/wer_beam"], abs=1e-7)
    assert f"test WER {100 * metrics['test/wer_beam']:.2f} %" in out.getvalue()
    card = (folder / "README.md").read_text()
    for expected in [
        "| test_wer_beam_reloaded_export |",
        "| test_wer |",
        "CMU Flite",
        "voice-assistant command",
        "Trained with: `zoo demo --text commands --minutes 2`",
        "Steps / epochs: 12 / 1",
        "## Decoding",
        "Seed: 0",
        "class_path",
    ]:
        assert expected in card, expected
    assert {"lexicon.txt", "lm.arpa"} <= {p.name for p in folder.iterdir()}
