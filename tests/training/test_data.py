"""Time-ordered splits, replay share, content hash, too few rows."""

from __future__ import annotations

import numpy as np
import pytest

from training import InsufficientDataError, LabelledRows, SplitConfig, split_by_time


def rows(n: int, seed: int = 0) -> LabelledRows:
    rng = np.random.default_rng(seed)
    times = rng.permutation(n).astype(np.float64)  # arrives out of order
    return LabelledRows(rng.normal(size=(n, 3)).astype(np.float32),
                        rng.integers(0, 2, n), times)


def test_holdout_is_the_newest_part_and_parts_do_not_overlap() -> None:
    r = rows(1000)
    s = split_by_time(r, config=SplitConfig(replay_share=0.3))
    assert len(s.holdout) == 250 and len(s.validation) == 200 and len(s.train) == 550
    assert s.holdout.times is not None
    assert s.holdout.times.min() == 750 and s.holdout.times.max() == 999
    sel = s.selection
    assert sel["train"]["rows"] == [0, 550] and sel["holdout"]["rows"] == [750, 1000]
    assert sel["train"]["time_last"] < sel["validation"]["time_first"]
    assert sel["validation"]["time_last"] < sel["holdout"]["time_first"]
    assert sel["train"]["n_replay"] == 0  # no reference given


def test_replay_share_and_reference_holdout() -> None:
    r, ref = rows(1000), rows(2000, seed=5)
    s = split_by_time(r, LabelledRows(ref.x, ref.y), SplitConfig(replay_share=0.3))
    n_replay = s.selection["train"]["n_replay"]
    assert n_replay / len(s.train) == pytest.approx(0.3, abs=0.01)
    assert s.selection["validation"]["n_replay"] / len(s.validation) == pytest.approx(0.3,
                                                                                    abs=0.01)
    assert s.reference_holdout is not None and len(s.reference_holdout) == 400
    # replayed rows never come from the reference holdout
    held = {row.tobytes() for row in s.reference_holdout.x}
    assert not any(row.tobytes() in held for row in s.train.x[-n_replay:])
    assert s.holdout.x.shape[0] == 250  # the holdout is recent rows only


def test_content_hash_is_stable_and_sensitive() -> None:
    a = split_by_time(rows(500)).selection["recent_sha256"]
    assert a == split_by_time(rows(500)).selection["recent_sha256"]
    changed = rows(500)
    changed.y[0] = 1 - changed.y[0]
    assert split_by_time(changed).selection["recent_sha256"] != a


def test_too_few_labelled_rows_is_a_clear_error() -> None:
    r = rows(300)
    y = r.y.astype(np.float64)
    y[:150] = np.nan  # unlabelled rows do not count
    with pytest.raises(InsufficientDataError, match=r"150 labelled rows.*min_rows=200"):
        split_by_time(LabelledRows(r.x, y, r.times))
    with pytest.raises(InsufficientDataError, match="holdout needs >= 100"):
        split_by_time(rows(250), config=SplitConfig(min_holdout=100))


def test_bad_configuration_names_the_parameter() -> None:
    with pytest.raises(ValueError, match="replay_share"):
        SplitConfig(replay_share=1.0)
    with pytest.raises(ValueError, match="event times"):
        split_by_time(LabelledRows(np.zeros((300, 2)), np.zeros(300)))
