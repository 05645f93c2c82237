"""AutoEncoderRecommender (masked loss, dense re-feeding, corpus RMSE), the bias baseline,
the Recommender pipeline, `zoo recommend` and the configs."""

import copy
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import zoo
from zoo import recipes
from zoo.cli import main as zoo_main
from zoo.lightning_modules.autoencoder_recommender import AutoEncoderRecommender
from zoo.recsys.baselines import fit_biases
from zoo.recsys.losses import drop_ratings, masked_mse
from zoo.recsys.recommender import Recommender


def trainer(**kwargs) -> pl.Trainer:
    kwargs = {
        "max_epochs": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "accelerator": "cpu",
        **kwargs,
    }
    return pl.Trainer(**kwargs)


def test_masked_mse_matches_naive_loop():
    torch.manual_seed(0)
    ratings = torch.randint(0, 6, (4, 9)).float()
    predictions = torch.randn(4, 9) + 3
    total, count = 0.0, 0
    for b in range(4):
        for i in range(9):
            if ratings[b, i] != 0:
                total += (ratings[b, i].item() - predictions[b, i].item()) ** 2
                count += 1
    assert masked_mse(predictions, ratings).item() == pytest.approx(total / count, rel=1e-6)
    assert masked_mse(predictions[:2], torch.zeros(2, 9)).item() == 0  # nothing observed
    # the hand-written backward against autograd through the plain formula (float64 gradcheck too)
    p, r = predictions.clone().requires_grad_(), ratings.clone().requires_grad_()
    masked_mse(p, r).backward()
    p2, r2 = predictions.clone().requires_grad_(), ratings.clone().requires_grad_()
    observed = ratings != 0
    (torch.where(observed, r2 - p2, 0.0) ** 2).sum().div(observed.sum()).backward()
    torch.testing.assert_close(p.grad, p2.grad)
    torch.testing.assert_close(r.grad, r2.grad)
    torch.autograd.gradcheck(masked_mse, (predictions.double().requires_grad_(), ratings.double()))


def test_input_noise_only_hides_observed_ratings():
    x = torch.zeros(200, 50)
    x[:, ::2] = 4.0
    noisy = drop_ratings(x, 0.3, torch.Generator().manual_seed(0))
    assert ((noisy != 0) <= (x != 0)).all() and set(noisy.unique().tolist()) <= {0.0, 4.0}
    assert abs((noisy[:, ::2] == 0).float().mean().item() - 0.3) < 0.02


def tiny_module(refeed_steps=0, refeed_target="dense", n=12):
    torch.manual_seed(0)
    return AutoEncoderRecommender(
        network="autorec-ml100k",
        network_overrides={"encoder_sizes": (5,), "dropout": 0.0},
        num_items=n,
        refeed_steps=refeed_steps,
        refeed_target=refeed_target,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
    )


def sparse_batch(n=12, users=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, 6, (users, n), generator=g).float()
    return x * (torch.rand(users, n, generator=g) < 0.4)


@pytest.mark.parametrize("refeed_steps,refeed_target", [(0, "dense"), (1, "dense"), (2, "dense"), (1, "sparse")])
def test_refeeding_takes_extra_steps_with_the_right_targets(refeed_steps, refeed_target):
    x = sparse_batch()
    module = tiny_module(refeed_steps, refeed_target)
    reference = copy.deepcopy(module.net)
    t = trainer()
    t.fit(module, train_dataloaders=DataLoader([{"inputs": x}], batch_size=None))
    assert t.global_step == 1 + refeed_steps  # every re-feeding pass is a real optimizer step
    # the same steps by hand: a sparse step, then f(x) (detached) as dense input and target
    opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    outputs = reference(x)
    loss = masked_mse(outputs, x)
    opt.zero_grad()
    loss.backward()
    opt.step()
    for _ in range(refeed_steps):
        dense = outputs.detach()
        outputs = reference(dense)
        loss = F.mse_loss(outputs, dense) if refeed_target == "dense" else masked_mse(outputs, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for got, want in zip(module.net.parameters(), reference.parameters()):
        torch.testing.assert_close(got, want)
    if refeed_steps:
        # and it differs from stopping after the sparse step
        plain = tiny_module(0)
        trainer().fit(plain, train_dataloaders=DataLoader([{"inputs": x}], batch_size=None))
        assert not torch.allclose(plain.net.encoder_weights[0], module.net.encoder_weights[0])


@pytest.mark.parametrize("decay_biases", [False, True])
def test_weight_decay_reaches_biases_only_with_decay_biases(decay_biases):
    """Two Adam steps with L2 weight decay, by hand: every parameter decayed (``decay_biases``, as
    ``torch.optim.Adam(net.parameters())`` does) or only the weight matrices."""
    x = sparse_batch()
    module = tiny_module()
    module.hparams.decay_biases = decay_biases
    module.optimizer_factory = lambda params: torch.optim.Adam(params, lr=0.01, weight_decay=0.5)
    reference = copy.deepcopy(module.net)
    trainer(max_epochs=2).fit(module, train_dataloaders=DataLoader([{"inputs": x}], batch_size=None))
    weights = [p for p in reference.parameters() if p.ndim == 2]
    biases = [p for p in reference.parameters() if p.ndim == 1]
    opt = torch.optim.Adam(
        [{"params": weights}, {"params": biases, "weight_decay": 0.5 if decay_biases else 0.0}],
        lr=0.01,
        weight_decay=0.5,
    )
    for _ in range(2):
        loss = masked_mse(reference(x), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for got, want in zip(module.net.parameters(), reference.parameters()):
        torch.testing.assert_close(got, want)
    groups = module.optimizers().optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [0.5, 0.5 if decay_biases else 0.0]


def test_rmse_is_corpus_level_and_clamped():
    module = tiny_module()
    # one user with 1 target, one batch with many: corpus RMSE != mean of per-batch RMSEs
    inputs = [sparse_batch(users=1, seed=2), sparse_batch(users=5, seed=3)]
    targets = [torch.zeros(1, 12), sparse_batch(users=5, seed=4)]
    targets[0][0, 3] = 5.0
    batches = [{"inputs": i, "targets": t} for i, t in zip(inputs, targets)]
    result = trainer().validate(module, dataloaders=DataLoader(batches, batch_size=None), verbose=False)[0]
    with torch.no_grad():
        errors, per_batch = [], []
        for b in batches:
            p = module.net(b["inputs"]).clamp(1, 5)
            e = (p - b["targets"])[b["targets"] != 0] ** 2
            errors.append(e)
            per_batch.append(e.mean().sqrt().item())
    corpus = torch.cat(errors).mean().sqrt().item()
    assert result["val/rmse"] == pytest.approx(corpus, rel=1e-5)
    assert abs(corpus - np.mean(per_batch)) > 1e-3


def test_bias_baseline_matches_joint_ridge_solution():
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 6, 60), rng.integers(0, 5, 60)
    ratings = rng.integers(1, 6, 60).astype(float)
    model = fit_biases(users, items, ratings, 6, 5, reg_user=2.0, reg_item=3.0, passes=200)
    # minimise Σ (r − μ − b_u − b_i)² + 2 Σ b_u² + 3 Σ b_i² jointly (μ = mean rating fixed)
    design = np.zeros((60, 11))
    design[np.arange(60), users] = 1
    design[np.arange(60), 6 + items] = 1
    penalty = np.diag([2.0] * 6 + [3.0] * 5)
    solution = np.linalg.solve(design.T @ design + penalty, design.T @ (ratings - ratings.mean()))
    np.testing.assert_allclose(np.r_[model.user_bias, model.item_bias], solution, atol=1e-8)


def write_ml100k(tmp_path, n_users=30, n_items=25, per_user=10, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    lines = []
    for u in range(1, n_users + 1):
        for k, i in enumerate(rng.choice(n_items, per_user, replace=False)):
            lines.append(f"{u}\t{i + 101}\t{rng.integers(1, 6)}\t{1000 * u + k}\n")
    path = tmp_path / "u.data"
    path.write_text("".join(lines))
    return path


def fit_with_cli(tmp_path, config="autorec_ml100k.yaml", extra=()):
    data = write_ml100k(tmp_path)
    args = [
        "fit",
        "--config",
        str(recipes.folder() / config),
        "--data.init_args.path",
        str(data),
        "--trainer.max_epochs",
        "2",
        "--trainer.default_root_dir",
        str(tmp_path),
        *extra,
    ]
    assert zoo_main(args) == 0
    return data, sorted(tmp_path.rglob("*.ckpt"))


def test_recommender_pipeline_round_trip_and_cli(tmp_path, capsys):
    data, checkpoints = fit_with_cli(tmp_path)
    assert checkpoints
    module = AutoEncoderRecommender.load_from_checkpoint(checkpoints[-1], map_location="cpu")
    pipeline = zoo.load(str(checkpoints[-1]))  # through the checkpoint protocol: state_dict + to_pipeline()
    assert pipeline.data["path"] == str(data)
    assert pipeline.net.config.num_items == len(pipeline.item_ids) <= 25
    pipeline.save_pretrained(tmp_path / "exported")
    loaded = zoo.load(str(tmp_path / "exported"))
    assert isinstance(loaded, Recommender) and loaded.item_ids == pipeline.item_ids
    # recommend for user 3: their rated items are excluded, the rest ranked by the network's output
    history = loaded.user_history(3)
    lines = [line.split("\t") for line in data.read_text().splitlines()]
    assert history == {int(i): float(r) for u, i, r, _ in lines if u == "3"}
    top = loaded.recommend(3, k=5)
    x = torch.zeros(len(loaded.item_ids))
    for item, rating in history.items():
        if item in loaded.column:
            x[loaded.column[item]] = rating
    with torch.no_grad():
        y = module.net.eval()(x[None])[0].clamp(1, 5)
    unseen = [(loaded.item_ids[c], y[c].item()) for c in range(len(y)) if loaded.item_ids[c] not in history]
    expected = sorted(unseen, key=lambda t: -t[1])[:5]
    assert [v for _, v in top] == pytest.approx([v for _, v in expected], abs=1e-5)  # the best 5 (ties clamp)
    assert all(i not in history and dict(unseen)[i] == pytest.approx(v, abs=1e-5) for i, v in top)
    # the command, from the exported folder and from the checkpoint
    capsys.readouterr()
    assert zoo_main(["recommend", "--model", str(tmp_path / "exported"), "--user", "3", "--k", "5"]) == 0
    out = capsys.readouterr().out
    assert "top 5 unseen items for user 3" in out and str(top[0][0]) in out
    assert zoo_main(["recommend", "--model", str(checkpoints[-1]), "--user", "3", "--k", "2"]) == 0
    assert zoo_main(["recommend", "--model", str(tmp_path / "exported"), "--user", "999"]) == 1


def test_netflix_config_print_and_fast_dev_run(tmp_path, capsys):
    root = tmp_path / "netflix" / "training_set"
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for movie in range(1, 9):
        days = ["2005-10-0" + str(d) for d in range(1, 10)] + ["2005-12-1" + str(d) for d in range(0, 6)]
        text = f"{movie}:\n" + "".join(
            f"{c},{rng.integers(1, 6)},{days[(c + movie) % len(days)]}\n" for c in range(1, 40)
        )
        (root / f"mv_{movie:07d}.txt").write_text(text)
    config = str(recipes.folder() / "autorec_netflix.yaml")
    with pytest.raises(SystemExit):
        zoo_main(["fit", "--config", config, "--print_config"])
    printed = capsys.readouterr().out
    assert "lr: 0.005" in printed and "momentum: 0.9" in printed and "batch_size: 128" in printed
    assert "refeed_steps: 1" in printed and "autorec-netflix-full" in printed
    assert (
        zoo_main(
            [
                "fit",
                "--config",
                config,
                "--data.init_args.path",
                str(tmp_path / "netflix"),
                "--data.init_args.split",
                "N3M",
                "--trainer.fast_dev_run",
                "true",
                "--trainer.accelerator",
                "cpu",
                "--trainer.default_root_dir",
                str(tmp_path),
            ]
        )
        == 0
    )


def assert_recipe_within(recipe, resolved, where="config"):
    """Every value the recipe sets is in the resolved config (which adds the defaults)."""
    if isinstance(recipe, dict):
        for key, value in recipe.items():
            assert key in resolved, f"{where}.{key} missing"
            assert_recipe_within(value, resolved[key], f"{where}.{key}")
    elif isinstance(recipe, list):
        assert len(recipe) == len(resolved), where
        for i, (a, b) in enumerate(zip(recipe, resolved)):
            assert_recipe_within(a, b, f"{where}[{i}]")
    else:
        assert recipe == resolved, f"{where}: {recipe!r} != {resolved!r}"


def test_ml100k_config_resolves_to_the_recipe(tmp_path, capsys):
    """The printed config holds every value of the YAML (read independently with PyYAML), and the classes
    built from it carry them: Adam with weight decay 0.003 on biases too (decay_biases), the preset network,
    a checkpoint callback keeping last.ckpt. (Was: only `pytest.raises(SystemExit)`, which a broken recipe
    also raises.)"""
    import importlib

    import yaml

    from zoo.callbacks import ResumableCheckpoint
    from zoo.cli import ZooCLI

    path = recipes.folder() / "autorec_ml100k.yaml"
    recipe = yaml.safe_load(path.read_text())
    with pytest.raises(SystemExit) as exit_:
        zoo_main(["fit", "--config", str(path), "--print_config"])
    assert exit_.value.code in (0, None)
    assert_recipe_within(recipe, yaml.safe_load(capsys.readouterr().out))

    cli = ZooCLI(
        args=[
            "--config",
            str(path),
            "--data.init_args.path",
            str(write_ml100k(tmp_path)),
            "--model.init_args.num_items",
            "25",
        ],
        run=False,
    )
    model = cli.model
    assert (
        isinstance(model, AutoEncoderRecommender)
        and model.net.config == zoo.create("autorec-ml100k", num_items=25).config
    )
    model_args = recipe["model"]["init_args"]
    for key in ("input_noise", "refeed_steps", "decay_biases"):
        assert model.hparams[key] == model_args[key], key
    assert model_args["decay_biases"] is True  # the recipe's choice (docs/experiments.md)
    optimizer = model.configure_optimizers()
    module, _, name = model_args["optimizer"]["class_path"].rpartition(".")
    assert type(optimizer) is getattr(importlib.import_module(module), name)
    lr, decay = (model_args["optimizer"]["init_args"][k] for k in ("lr", "weight_decay"))
    assert [(g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == [(lr, decay), (lr, decay)]
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == sum(
        p.numel() for p in model.net.parameters()
    )
    checkpoints = [c for c in cli.trainer.callbacks if isinstance(c, ResumableCheckpoint)]
    assert [(c.monitor, c.mode, c.save_last) for c in checkpoints] == [("val/rmse", "min", True)]
    data = recipe["data"]["init_args"]
    assert cli.trainer.max_epochs == recipe["trainer"]["max_epochs"]
    assert {k: cli.datamodule.hparams[k] for k in ("split", "train_fraction", "seed", "batch_size")} == {
        k: data[k] for k in ("split", "train_fraction", "seed", "batch_size")
    }


def test_ema_weight_averaging_averages_the_network_built_from_the_items(tmp_path):
    """Lightning's EMAWeightAveraging copies the module in its own setup(), before the module's: the network
    sized by the data's items and the item index must exist by then (configure_model), or the average holds no
    weights, the checkpoint's state_dict is empty and the exported recommender cannot look items up."""
    from pytorch_lightning.callbacks import EMAWeightAveraging, ModelCheckpoint
    from zoo_toys import assert_checkpoint_holds_the_average

    from zoo.datamodules.ratings import RatingsDataModule

    torch.manual_seed(0)
    data = RatingsDataModule(path=str(write_ml100k(tmp_path)), batch_size=8)
    module = AutoEncoderRecommender("autorec-ml100k", network_overrides={"encoder_sizes": [8]})
    ema = EMAWeightAveraging(decay=0.5)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(max_steps=4, enable_checkpointing=True, callbacks=[ema, checkpoints]).fit(module, data)

    reloaded = assert_checkpoint_holds_the_average(ema, module, checkpoints.last_model_path, "net.encoder_weights.0")
    assert reloaded.item_index.tolist() == data.item_ids.tolist()  # the integer item index survives averaging
