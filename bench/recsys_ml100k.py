"""Results table of docs/recommender.md: test RMSE on the embedded MovieLens-100k, measured in one run.

Rows: global mean, user + item biases (regularisation chosen on validation), and the deep
autoencoder trained by the recipe ``autorec_ml100k`` without and with dense
re-feeding (each evaluated at its best-validation epoch). Same split, same seed for all.

    python bench/recsys_ml100k.py [--epochs N] [--threads 1]

Results: ``bench/results/recsys_ml100k.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from harness import environment, table, write_result

from zoo import recipes
from zoo.cli import ZooCLI, quiet_known_warnings
from zoo.datamodules.ratings import RatingMatrix, RatingsDataModule
from zoo.recsys.baselines import fit_biases, rmse

CONFIG = recipes.folder() / "autorec_ml100k.yaml"


def coo(matrix: RatingMatrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.repeat(np.arange(matrix.num_users), matrix.row_counts()), matrix.indices, matrix.values


def baselines(data: RatingsDataModule) -> dict[str, tuple[float, float]]:
    """Name -> (validation RMSE, test RMSE)."""
    s = data.load()
    train, valid, test = coo(s.train), coo(s.val), coo(s.test)
    mean = train[2].mean()
    results = {
        "global mean": (rmse(np.full(len(valid[2]), mean), valid[2]), rmse(np.full(len(test[2]), mean), test[2]))
    }
    fits = {reg: fit_biases(*train, s.train.num_users, s.num_items, reg, reg) for reg in (1.0, 3.0, 10.0, 25.0)}
    val = {reg: rmse(fit.predict(valid[0], valid[1], (1, 5)), valid[2]) for reg, fit in fits.items()}
    best = min(val, key=val.get)
    results[f"user + item biases (λ = {best:g})"] = (
        val[best],
        rmse(fits[best].predict(test[0], test[1], (1, 5)), test[2]),
    )
    return results


def autoencoder(refeed_steps: int, epochs: int | None, root: Path) -> tuple[float, float, str, float]:
    """(best validation RMSE, test RMSE at that epoch, its checkpoint name, training seconds) of the recipe."""
    args = [
        "--config",
        str(CONFIG),
        "--model.init_args.refeed_steps",
        str(refeed_steps),
        "--trainer.default_root_dir",
        str(root / f"refeed{refeed_steps}"),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
    ]
    if epochs:
        args += ["--trainer.max_epochs", str(epochs)]
    cli = ZooCLI(args=args, run=False, trainer_defaults={"callbacks": []})
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    seconds = time.perf_counter() - start
    result = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)[0]
    best = cli.trainer.checkpoint_callback
    return float(best.best_model_score), result["test/rmse"], Path(best.best_model_path).stem, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's max_epochs")
    parser.add_argument("--root", default="runs/recsys_ml100k")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (1 is fastest for this small net on a busy machine)"
    )
    parser.add_argument("--name", default="recsys_ml100k", help="result file bench/results/<name>.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    env = environment()
    quiet_known_warnings()
    data = RatingsDataModule(None, split="user", seed=0)
    s = data.load()
    print(f"MovieLens-100k, per-user time split: {s.stats}")
    rows = baselines(data)
    for refeed in (0, 1):
        val, test, best, seconds = autoencoder(refeed, args.epochs, Path(args.root))
        rows[f"autoencoder, refeed_steps={refeed} ({best}, {seconds:.0f} s training)"] = (val, test)
    print("\n| predictor | validation RMSE | test RMSE |\n|---|---|---|")
    for name, (val, test) in rows.items():
        print(f"| {name} | {val:.4f} | {test:.4f} |")
    write_result(
        args.name,
        [
            table(
                f"Test RMSE on MovieLens-100k, per-user time split ({s.stats})",
                [("predictor", "predictor"), ("val", "validation RMSE", ".4f"), ("test", "test RMSE", ".4f")],
                [{"predictor": name, "val": val, "test": test} for name, (val, test) in rows.items()],
            )
        ],
        env=env,
        title="Recommender on MovieLens-100k",
    )


if __name__ == "__main__":
    main()
