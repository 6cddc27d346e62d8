"""Datasets in the original's layouts: FramesDataset's test split (a test/ folder, or a seeded 20%
split) and PairedDataset's animation pairs, plus the metrics CSV a dataset run writes.
"""
import csv
import io
import math
import os

import numpy as np

import utils


TEST_SIZE = 0.2  # FramesDataset's train_test_split(test_size=0.2, random_state=0) without a train/ folder


def dataset_test_videos(root_dir):
    """Paths of the videos in the test split of the dataset at `root_dir`.

    As the original FramesDataset: `root_dir/test/` when `root_dir/train/`
    exists, else a random 20% of `root_dir` chosen exactly as scikit-learn's
    `train_test_split(names, test_size=0.2, random_state=0)`. Names are sorted
    first: the original lists them in the file system's arbitrary order, which
    makes its split differ between machines.
    """
    root_dir = str(root_dir)
    if not os.path.isdir(root_dir):
        raise utils.UserError(f"{root_dir}: no such dataset folder (set dataset_params.root_dir or pass --root_dir)")
    if os.path.isdir(os.path.join(root_dir, "train")):
        test_dir = os.path.join(root_dir, "test")
        if not os.path.isdir(test_dir):
            raise utils.UserError(f"{root_dir}: has train/ but no test/ folder")
        names = _dataset_entries(test_dir)
        if not names:
            raise utils.UserError(f"{test_dir}: no videos in the test split")
        return [os.path.join(test_dir, name) for name in names]
    return [os.path.join(root_dir, name) for name in random_test_split(_dataset_entries(root_dir), root_dir)]


def _dataset_entries(folder):
    return sorted(name for name in os.listdir(folder) if not name.startswith("."))


def random_test_split(names, where="dataset"):
    """The test part of scikit-learn's `train_test_split(names, test_size=0.2, random_state=0)`.

    ShuffleSplit draws one permutation from `RandomState(0)` and takes its first
    ceil(0.2 * n) indices as the test set, in permutation order.
    """
    count = len(names)
    test_count = math.ceil(TEST_SIZE * count)
    if count - test_count < 1:
        raise utils.UserError(f"{where}: {count} video(s) are too few for a random train/test split; "
                        f"put the test videos in test/ and the others in train/")
    permutation = np.random.RandomState(0).permutation(count)
    return [names[i] for i in permutation[:test_count]]


def animation_pairs(names, num_pairs, pairs_list=None):
    """(driving, source) name pairs for dataset animation, as the original PairedDataset picks them.

    With a pairs list (a CSV with `source` and `driving` columns, like the
    original's data/vox256.csv), its first `num_pairs` rows whose two videos
    are both in `names`. Without one, `num_pairs` distinct (driving, source)
    index pairs drawn with `np.random.seed(0)` from the first
    min(num_pairs, len(names)) videos (a video may drive itself).
    """
    if pairs_list is not None:
        return _listed_pairs(names, num_pairs, pairs_list)
    side = min(num_pairs, len(names))
    grid = np.mgrid[:side, :side].reshape(2, -1).T  # [side * side, 2]: (driving, source) indices
    count = min(len(grid), num_pairs)
    chosen = grid.take(np.random.RandomState(0).choice(len(grid), count, replace=False), axis=0)
    return [(names[driving], names[source]) for driving, source in chosen]


def _listed_pairs(names, num_pairs, pairs_list):
    known = set(names)
    try:
        with open(pairs_list, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise utils.UserError(f"{pairs_list}: cannot read the pairs list ({utils.first_line(err)})") from err
    if rows and not {"source", "driving"} <= set(rows[0]):
        raise utils.UserError(f"{pairs_list}: a pairs list needs 'source' and 'driving' columns")
    pairs = [(row["driving"], row["source"]) for row in rows if row["driving"] in known and row["source"] in known]
    return pairs[:num_pairs]


def write_csv_atomically(path, rows):
    """Write rows (lists of cells) as CSV under a temporary name, then rename it into place."""
    text = io.StringIO(newline="")
    csv.writer(text).writerows(rows)
    try:
        utils.write_atomically(path, text.getvalue())
    except OSError as err:
        raise utils.UserError(f"{path}: cannot write ({utils.first_line(err)})") from err
