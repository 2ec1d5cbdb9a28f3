"""Streaming detectors: detection delay, false alarms, ADWIN's bookkeeping, API."""

from __future__ import annotations

import numpy as np
import pytest

from detectors.streaming import ADWIN, DDM, PageHinkley

CHANGE = 1000  # index of the first record after an abrupt change
SEEDS = range(20)


def bernoulli(seed: int, n: int, rate: float) -> list[bool]:
    return (np.random.default_rng(seed).random(n) < rate).tolist()


def abrupt(seed: int, before: float = 0.2, after: float = 0.8) -> list[bool]:
    rng = np.random.default_rng(seed)
    return (rng.random(CHANGE + 1000) < np.repeat([before, after], [CHANGE, 1000])).tolist()


def detections(detector, stream) -> list[int]:
    return [i for i, x in enumerate(stream) if detector.update(x)]


def first_delay(detector, stream) -> int:
    """Records from the change to the first detection at or after it."""
    return next(i - CHANGE for i in detections(detector, stream) if i >= CHANGE)


# Measured delays over SEEDS (error rate 0.2 -> 0.8 at record 1000), worst / median:
# DDM 184 / 46.5 (after an early false alarm its statistics restart, sometimes shortly
# before the change), ADWIN 55 / 23 (cuts are looked for every clock = 32 records),
# Page-Hinkley 95 / 76 (about threshold / (0.6 - delta) records).
@pytest.mark.parametrize(
    ("make", "bound"),
    [(DDM, 250), (ADWIN, 100), (PageHinkley, 150), (lambda: PageHinkley(mode="up"), 150)],
)
def test_detection_delay_on_abrupt_shift_is_bounded(make, bound: int) -> None:
    delays = [first_delay(make(), abrupt(seed)) for seed in SEEDS]
    assert max(delays) <= bound, delays
    assert min(delays) >= 0


def test_adwin_false_alarms_on_stationary_streams_are_rare() -> None:
    # 20 streams x 10,000 Bernoulli(0.3) errors: measured 0 detections (also 0 over 50).
    alarms = sum(len(detections(ADWIN(), bernoulli(10_000 + s, 10_000, 0.3))) for s in SEEDS)
    assert alarms <= 1


def test_ddm_false_alarms_on_stationary_streams_are_bounded() -> None:
    # DDM's minimum (p + s) is taken from as few as 30 records, so it raises early false
    # alarms: measured 54 over 200 streams of 10,000 (one per ~37,000 records), 5 over
    # these 20 streams. Bound: one per 10,000 records.
    alarms = sum(len(detections(DDM(), bernoulli(10_000 + s, 10_000, 0.3))) for s in SEEDS)
    assert alarms <= len(SEEDS)


def test_page_hinkley_false_alarms_follow_its_threshold() -> None:
    # One-sided Page-Hinkley on Bernoulli(0.3) (sigma^2 = 0.21) drifts by -delta per
    # record; Siegmund's approximation of the in-control run length at lambda = 50 is
    # ~31,000 records (0.32 alarms per 10,000) and ~470,000 at lambda = 100.
    streams = [bernoulli(10_000 + s, 10_000, 0.3) for s in SEEDS]
    default = sum(len(detections(PageHinkley(mode="up"), x)) for x in streams)
    strict = sum(len(detections(PageHinkley(mode="up", threshold=100.0), x)) for x in streams)
    assert default <= len(SEEDS)  # measured: 7 (13 with mode="both")
    assert strict <= 1  # measured: 0


def test_river_documented_example_behaviour() -> None:
    # River's ADWIN docs: 1,000 draws from {0, 1} then 1,000 from {4, ..., 7}; River
    # reports the change at index 1023, the first clock tick (32) after it.
    rng = np.random.default_rng(12345)
    stream = np.concatenate([rng.integers(0, 2, 1000), rng.integers(4, 8, 1000)]).tolist()
    adwin = ADWIN()
    assert detections(adwin, stream) == [1023]
    assert adwin.estimation == pytest.approx(5.5, abs=0.1) and adwin.n_detections == 1


def test_adwin_window_is_an_exact_suffix_of_the_stream() -> None:
    # ADWIN only ever drops its oldest records, so its window is the stream's last
    # `width` values: the running sum and variance must match them after any update.
    rng = np.random.default_rng(3)
    stream = np.concatenate([rng.random(3000) < 0.2, rng.random(3000) < 0.7, rng.random(2000)])
    adwin = ADWIN(clock=1)
    cuts = 0
    for i, x in enumerate(stream.tolist()):
        cuts += adwin.update(x)
        if i % 97 == 0 or adwin.drift_detected:
            window = stream[i + 1 - adwin.width : i + 1].astype(np.float64)
            assert adwin.estimation == pytest.approx(window.mean(), rel=1e-9, abs=1e-12)
            assert adwin.variance == pytest.approx(window.var(), rel=1e-7, abs=1e-12)
    assert cuts >= 2 and adwin.n_detections == cuts and adwin.width < 4000
    # The exponential histogram keeps at most max_buckets buckets of each size.
    assert all(len(row) <= adwin.max_buckets for row in adwin._totals)
    assert sum(len(row) * 2**level for level, row in enumerate(adwin._totals)) == adwin.width


def test_ddm_warns_before_it_detects() -> None:
    ddm = DDM()
    warned_at, detected_at = None, None
    for i, x in enumerate(abrupt(7, before=0.1, after=0.4)):
        drift = ddm.update(x)
        if i >= CHANGE and ddm.warning_detected and warned_at is None:
            warned_at = i
        if i >= CHANGE and drift:
            detected_at = i
            assert not ddm.warning_detected  # a detection is not also a warning
            break
    assert warned_at is not None and detected_at is not None and warned_at < detected_at
    assert ddm.drift_detected and ddm.n_seen == detected_at + 1
    assert np.isnan(ddm.error_rate)  # statistics restarted after the detection


def test_page_hinkley_modes() -> None:
    rises = abrupt(8, before=0.2, after=0.8)
    falls = abrupt(8, before=0.8, after=0.2)
    assert detections(PageHinkley(mode="up"), rises)
    assert not [i for i in detections(PageHinkley(mode="up"), falls) if i >= CHANGE]
    assert detections(PageHinkley(mode="down"), falls)
    assert not [i for i in detections(PageHinkley(mode="down"), rises) if i >= CHANGE]
    both = PageHinkley()
    assert first_delay(both, falls) == first_delay(PageHinkley(mode="down"), falls)


def test_real_valued_stream() -> None:
    rng = np.random.default_rng(9)
    losses = np.concatenate([rng.gamma(2.0, 0.1, CHANGE), rng.gamma(2.0, 0.2, 1000)]).tolist()
    assert 0 <= first_delay(ADWIN(), losses) <= 200
    assert 0 <= first_delay(PageHinkley(threshold=5.0), losses) <= 200


@pytest.mark.parametrize("make", [DDM, ADWIN, PageHinkley])
def test_deterministic_and_reset(make) -> None:
    stream = abrupt(11) + abrupt(12)
    first = make()
    found = detections(first, stream)
    assert found and found == detections(make(), stream)
    assert first.n_seen == len(stream)
    first.reset()
    assert first.n_seen == 0 and not first.drift_detected
    assert detections(first, stream) == found  # reset == freshly constructed
    for x in stream[:500]:
        first.update(x)
    first.reset()
    fresh = make()
    assert [first.update(x) for x in stream] == [fresh.update(x) for x in stream]


@pytest.mark.parametrize(
    ("make", "kwargs", "error", "name"),
    [
        (DDM, {"min_num_instances": 0}, ValueError, "min_num_instances"),
        (DDM, {"min_num_instances": 2.5}, TypeError, "min_num_instances"),
        (DDM, {"warning_threshold": 0.0}, ValueError, "warning_threshold"),
        (DDM, {"warning_threshold": "2"}, TypeError, "warning_threshold"),
        (DDM, {"drift_threshold": 1.5}, ValueError, "drift_threshold"),
        (DDM, {"drift_threshold": float("inf")}, ValueError, "drift_threshold"),
        (ADWIN, {"delta": 0.0}, ValueError, "delta"),
        (ADWIN, {"delta": 1.0}, ValueError, "delta"),
        (ADWIN, {"delta": float("nan")}, ValueError, "delta"),
        (ADWIN, {"clock": 0}, ValueError, "clock"),
        (ADWIN, {"clock": True}, TypeError, "clock"),
        (ADWIN, {"max_buckets": 1}, ValueError, "max_buckets"),
        (ADWIN, {"min_window_length": 0}, ValueError, "min_window_length"),
        (ADWIN, {"grace_period": -1}, ValueError, "grace_period"),
        (PageHinkley, {"min_instances": 0}, ValueError, "min_instances"),
        (PageHinkley, {"delta": -0.1}, ValueError, "delta"),
        (PageHinkley, {"threshold": 0.0}, ValueError, "threshold"),
        (PageHinkley, {"threshold": None}, TypeError, "threshold"),
        (PageHinkley, {"alpha": 0.0}, ValueError, "alpha"),
        (PageHinkley, {"alpha": 1.01}, ValueError, "alpha"),
        (PageHinkley, {"mode": "sideways"}, ValueError, "mode"),
    ],
)
def test_bad_parameters_are_rejected(make, kwargs: dict, error: type, name: str) -> None:
    with pytest.raises(error, match=name):
        make(**kwargs)


@pytest.mark.parametrize("make", [DDM, ADWIN, PageHinkley])
def test_bad_values_are_rejected(make) -> None:
    detector = make()
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="x"):
            detector.update(bad)
    for bad in ("1", None, [1]):
        with pytest.raises(TypeError, match="x"):
            detector.update(bad)
    assert detector.n_seen == 0  # rejected values are not counted
    assert detector.update(np.float64(1.0)) is False and detector.update(np.True_) is False


def test_ddm_accepts_binary_errors_only() -> None:
    ddm = DDM()
    with pytest.raises(ValueError, match="0 or 1"):
        ddm.update(0.5)
    for x in (0, 1, True, False, 0.0, np.int64(1)):
        ddm.update(x)
    assert ddm.n_seen == 6 and ddm.error_rate == pytest.approx(0.5)


@pytest.mark.parametrize("make", [DDM, ADWIN, PageHinkley])
def test_state_round_trips_through_json(make) -> None:  # type: ignore[no-untyped-def]
    import json

    before, after = bernoulli(5, 700, 0.2), abrupt(6)
    original = make()
    for x in before:
        original.update(x)
    resumed = make()
    resumed.set_state(json.loads(json.dumps(original.get_state())))
    assert [resumed.update(x) for x in after] == [original.update(x) for x in after]
    assert resumed.get_state() == original.get_state()


def test_state_of_another_kind_or_layout_is_refused() -> None:
    ddm = DDM()
    with pytest.raises(ValueError, match="not a ddm"):
        ddm.set_state(ADWIN().get_state())
    state = DDM().get_state()
    del state["state"]["_p"]
    with pytest.raises(ValueError, match="another layout"):
        ddm.set_state(state)
    state = DDM().get_state()
    state["state"]["_n"] = "many"
    with pytest.raises(ValueError, match="'_n' has type str"):
        ddm.set_state(state)
    assert ddm.get_state() == DDM().get_state()  # unchanged by the refusals
