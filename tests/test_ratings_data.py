"""Rating readers, splits, CSR batches and the RatingsDataModule, on small files written in tmp_path."""

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo.cache import cache_root
from zoo.datamodules import rating_files
from zoo.datamodules.rating_files import (
    EMBEDDED_MEMBER,
    RatingsFormatError,
    RatingTable,
    embedded_ml100k,
    keep_latest,
    read_ratings,
)
from zoo.datamodules.ratings import RatingMatrix, RatingsDataModule, split_ratings

ROWS = [(1, 10, 4, 100), (1, 20, 3, 200), (2, 10, 5, 150), (3, 30, 1, 50), (2, 30, 2, 300)]


def write_format(tmp_path: Path, fmt: str, rows=ROWS) -> Path:
    if fmt == "ml-100k":
        path, text = tmp_path / "u.data", "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows)
    elif fmt == "ml-1m":
        path, text = tmp_path / "ratings.dat", "".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in rows)
    elif fmt == "csv":
        path = tmp_path / "ratings.csv"
        text = "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r}.0,{t}\n" for u, i, r, t in rows)
    else:
        path = tmp_path / "x.inter"
        text = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(
            f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows
        )
    path.write_text(text)
    return path


@pytest.mark.parametrize("fmt", ["ml-100k", "ml-1m", "csv", "inter"])
def test_movielens_formats_read_identically(tmp_path, fmt):
    table = read_ratings(write_format(tmp_path, fmt))
    np.testing.assert_array_equal(table.users, [u for u, *_ in ROWS])
    np.testing.assert_array_equal(table.items, [i for _, i, *_ in ROWS])
    np.testing.assert_array_equal(table.ratings, [r for *_, r, _ in ROWS])
    np.testing.assert_array_equal(table.times, [t for *_, t in ROWS])
    assert table.ratings.dtype == np.float32 and table.skipped == 0
    # folders resolve to their standard file name
    if fmt != "inter":
        assert len(read_ratings(tmp_path)) == len(ROWS)


@pytest.mark.parametrize(
    "line,reason",
    [
        ("7\t8\t4", "expected 4 fields"),
        ("x7\t8\t4\t100", "user id is not an integer"),
        ("7\t8.5\t4\t100", "item id is not an integer"),
        ("7\t8\t6\t100", "rating outside the declared scale"),
        ("7\t8\t0\t100", "rating outside the declared scale"),
        ("7\t8\tfour\t100", "rating is not a number"),
        ("7\t8\t4\tyesterday", "timestamp is not a number"),
    ],
)
def test_malformed_lines_name_file_and_line_or_are_skipped(tmp_path, line, reason):
    path = tmp_path / "u.data"
    path.write_text("1\t10\t4\t100\n\n2\t10\t3\t100\n" + line + "\n3\t10\t5\t100\n")
    with pytest.raises(RatingsFormatError, match=rf"u\.data:4: {reason}"):
        read_ratings(path)
    table = read_ratings(path, skip_bad=True)
    assert table.skipped == 1 and list(table.users) == [1, 2, 3]


def write_netflix(root: Path, movies: dict[int, list[tuple[int, int, str]]]) -> Path:
    folder = root / "training_set"
    folder.mkdir(parents=True)
    for movie, rows in movies.items():
        text = f"{movie}:\n" + "".join(f"{c},{r},{d}\n" for c, r, d in rows)
        (folder / f"mv_{movie:07d}.txt").write_text(text)
    return root


def test_netflix_layout_dates_and_errors(tmp_path):
    root = write_netflix(tmp_path / "nf", {1: [(6, 3, "2005-09-06"), (7, 5, "2005-12-01")], 2: [(6, 4, "2004-01-31")]})
    table = read_ratings(root)
    assert sorted(zip(table.items, table.users, table.ratings)) == [(1, 6, 3), (1, 7, 5), (2, 6, 4)]
    # calendar dates -> midnight UTC, independent of the local time zone
    assert int(table.times[table.users == 7][0]) == 1133395200
    bad = write_netflix(tmp_path / "bad", {3: [(6, 3, "2005-09-06"), (7, 5, "2005-13-01")]})
    with pytest.raises(RatingsFormatError, match=r"mv_0000003\.txt:3: date is not YYYY-MM-DD"):
        read_ratings(bad)
    assert read_ratings(bad, skip_bad=True).skipped == 1
    (tmp_path / "bad" / "training_set" / "mv_0000004.txt").write_text("6,3,2005-09-06\n")
    with pytest.raises(RatingsFormatError, match=r"mv_0000004\.txt:1: expected a 'MovieID:' line"):
        read_ratings(bad, skip_bad=True)


def test_netflix_time_windows_seeded_coin_and_unseen_dropped(tmp_path):
    rng = np.random.default_rng(0)
    movies = {m: [(c, int(rng.integers(1, 6)), "2005-10-15") for c in range(1, 30)] for m in (1, 2, 3)}
    for m in (4, 5):
        movies[m] = [(c, int(rng.integers(1, 6)), "2005-10-15") for c in range(30, 40)]  # N3M training window
        movies[m] += [(c, int(rng.integers(1, 6)), "2005-12-10") for c in range(1, 25)]  # test month
    for m in (1, 2, 3):
        movies[m] += [(c, 3, "2005-08-31") for c in range(40, 44)]  # before N3M's training window
    movies[6] = [(1, 4, "2005-12-31")]  # item unseen in training
    movies[7] = [(99, 4, "2005-12-02"), (5, 1, "2005-11-30")]  # user 99 unseen; 11-30 is the last train day
    table = read_ratings(write_netflix(tmp_path, movies))
    s = split_ratings(table, "N3M", seed=3)
    assert s.stats["held_out_unseen_dropped"] == 2
    assert s.stats["outside_windows"] == 12
    assert s.stats["train"] == 3 * 29 + 2 * 10 + 1 and s.stats["val"] + s.stats["test"] == 2 * 24
    assert 7 in s.item_ids and 6 not in s.item_ids and 99 not in s.user_ids
    again = split_ratings(table, "N3M", seed=3)
    np.testing.assert_array_equal(again.val.indptr, s.val.indptr)
    other = split_ratings(table, "N3M", seed=4)
    assert not np.array_equal(other.val.indices, s.val.indices) or not np.array_equal(other.val.indptr, s.val.indptr)
    # N1Y has no training ratings here
    with pytest.raises(ValueError, match="training part is empty"):
        split_ratings(table, "N1Y")


def test_duplicates_keep_latest():
    t = RatingTable(
        np.array([1, 1, 1, 2]), np.array([5, 5, 5, 5]), np.array([1, 4, 2, 3], np.float32), np.array([10, 30, 30, 5])
    )
    kept, dropped = keep_latest(t)
    assert dropped == 2
    assert list(zip(kept.users, kept.items, kept.ratings)) == [(1, 5, 2.0), (2, 5, 3.0)]  # equal times: later line


def test_user_split_time_order_and_global_split():
    # user 1 rates items 0..9 at decreasing times: their first 70 % in TIME order are items 9..3
    users = np.r_[np.full(10, 1), np.full(10, 2)]
    items = np.r_[np.arange(10), np.arange(10)]
    times = np.r_[100 - np.arange(10), 1000 + np.arange(10)]
    t = RatingTable(users, items, np.ones(20, np.float32) * 3, times)
    s = split_ratings(t, "user", train_fraction=0.7, seed=0)
    assert set(s.item_ids[s.train.row(0)[0]]) == set(range(3, 10))
    assert set(s.item_ids[s.train.row(1)[0]]) == set(range(7))
    held = set(s.item_ids[np.r_[s.val.row(0)[0], s.test.row(0)[0]]])
    assert held == {0, 1, 2}
    # global: the first ratings in time order train, whoever made them
    g_table = RatingTable(
        np.array([1, 2, 1, 2, 1, 2, 1, 2, 3]),
        np.array([0, 2, 1, 3, 2, 0, 3, 1, 0]),
        np.full(9, 4.0, np.float32),
        np.arange(1, 10),
    )
    g = split_ratings(g_table, "global", train_fraction=0.44, seed=0)
    assert g.stats["train"] == 4 and list(g.user_ids) == [1, 2]
    assert g.stats["held_out_unseen_dropped"] == 1  # user 3 rated only after the cut
    assert g.val.nnz + g.test.nnz == 4
    with pytest.raises(ValueError, match="empty"):
        split_ratings(t.select(np.zeros(20, bool)), "user")


def naive_dense(matrix: RatingMatrix, users):
    out = torch.zeros(len(users), matrix.num_items)
    for b, u in enumerate(users):
        for k in range(matrix.indptr[u], matrix.indptr[u + 1]):
            out[b, matrix.indices[k]] = float(matrix.values[k])
    return out


def test_csr_dense_batches_match_naive():
    rng = np.random.default_rng(1)
    rows, cols = rng.integers(0, 30, 400), rng.integers(0, 50, 400)
    key = np.unique(rows * 50 + cols)
    m = RatingMatrix.from_coo(key // 50, key % 50, rng.integers(1, 6, len(key)).astype(np.float32), 30, 50)
    assert m.nnz == len(key) and m.indptr[-1] == m.nnz
    users = [3, 0, 29, 3, 17]
    torch.testing.assert_close(m.dense(users), naive_dense(m, users))


def write_ml(tmp_path, n_users=40, n_items=30, per_user=12, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, n_users + 1):
        for k, i in enumerate(rng.choice(n_items, per_user, replace=False)):
            rows.append((u, int(i) + 1, int(rng.integers(1, 6)), 1000 * u + k))
    return write_format(tmp_path, "ml-100k", rows)


def test_datamodule_batches_train_vector_in_heldout_target_no_drop(tmp_path):
    dm = RatingsDataModule(str(write_ml(tmp_path)), batch_size=7, eval_batch_size=9, seed=1)
    dm.setup("fit")
    s = dm.splits
    train = list(dm.train_dataloader())
    assert sum(len(b["inputs"]) for b in train) == s.train.num_users == 40
    assert all(set(b) == {"inputs", "users"} for b in train)
    val = list(dm.val_dataloader())
    val_users = np.concatenate([b["users"].numpy() for b in val])
    assert len(val_users) == int((s.val.row_counts() > 0).sum())  # no batch dropped
    assert sum(int((b["targets"] > 0).sum()) for b in val) == s.val.nnz
    for b in val:
        torch.testing.assert_close(b["inputs"], naive_dense(s.train, b["users"].tolist()))
        torch.testing.assert_close(b["targets"], naive_dense(s.val, b["users"].tolist()))
    assert sum(int((b["targets"] > 0).sum()) for b in dm.test_dataloader()) == s.test.nnz
    assert dm.num_items == len(s.item_ids)
    assert dm.dataset_card == "movielens" and RatingsDataModule(None).dataset_card == "movielens"


def fake_wheel(path: Path, inter_text: str) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("recbole/__init__.py", "")
        z.writestr(EMBEDDED_MEMBER, inter_text)
    return path


def test_embedded_data_read_from_a_wheel_without_network(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    rows = "".join(f"{u}\t{i}\t{(u + i) % 5 + 1}\t{u * 100 + (u + i) % 7}\n" for u in range(1, 6) for i in range(1, 8))
    (cache / "wheels").mkdir(parents=True)
    fake_wheel(
        cache / "wheels" / "recbole-1.2.1-py3-none-any.whl",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + rows,
    )

    def no_network(*args, **kwargs):
        raise AssertionError("pip must not run when the wheel is cached")

    monkeypatch.setattr(rating_files.subprocess, "run", no_network)
    monkeypatch.setenv("ZOO_CACHE", str(cache))
    path = embedded_ml100k()
    assert path == cache / "ml-100k" / "ml-100k.inter"
    assert len(read_ratings(path)) == 35
    dm = RatingsDataModule(None)
    assert dm.load().stats["ratings"] == 35
    # a wheel without the member: clear error
    (cache / "ml-100k" / "ml-100k.inter").unlink()
    (cache / "wheels" / "recbole-1.2.1-py3-none-any.whl").unlink()
    with zipfile.ZipFile(cache / "wheels" / "recbole-1.2.1-py3-none-any.whl", "w") as z:
        z.writestr("recbole/__init__.py", "")
    with pytest.raises(FileNotFoundError, match="has no member"):
        embedded_ml100k()


def test_zoo_cache_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "a"))
    assert cache_root() == tmp_path / "a"
    assert cache_root(tmp_path / "explicit") == tmp_path / "explicit"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ZOO_CACHE", "~/zc")
    assert cache_root() == tmp_path / "home" / "zc"
    monkeypatch.delenv("ZOO_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_root() == tmp_path / "x" / "zoo"
    monkeypatch.setenv("XDG_CACHE_HOME", "")  # empty counts as unset (XDG base-directory spec)
    assert cache_root() == tmp_path / "home" / ".cache" / "zoo"
    monkeypatch.setenv("XDG_CACHE_HOME", "~/xdg")
    assert cache_root() == tmp_path / "home" / "xdg" / "zoo"


def test_every_cache_user_shares_one_rule():
    """The corpora, the text data and the rating files all resolve the cache through zoo.cache."""
    from zoo.datamodules import synthetic_speech, text

    assert synthetic_speech.cache_root is text.cache_root is rating_files.cache_root is cache_root


def test_real_ml100k_if_cached():
    """The real MovieLens-100k, only when a previous run put it in the user cache (never downloaded here)."""
    path = Path.home() / ".cache" / "zoo" / "ml-100k" / "ml-100k.inter"
    if not path.is_file():
        pytest.skip("real ml-100k not in ~/.cache/zoo (the fake-wheel test covers the code path)")
    table = read_ratings(path)
    assert len(table) == 100_000 and len(np.unique(table.users)) == 943 and len(np.unique(table.items)) == 1682
