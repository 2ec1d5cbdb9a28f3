"""The retraining policy as a pure function: debounce, guard-rails, incidents, replays."""

from __future__ import annotations

from monitor.retrain.policy import (
    CONCEPT,
    COVARIATE,
    LABEL_SHIFT,
    Decision,
    ModelHistory,
    Request,
    Rules,
    Window,
    apply,
    classify,
    decide,
)
from monitor.retrain.store import request_id

RULES = Rules({"concept": "retrain", "label_shift": "recalibrate", "covariate": "collect"},
              k=2, n=3, min_labelled=400, cooldown_windows=2, max_per_day=3, approval="auto")


def lw(i: int, drifted: bool, n: int = 200) -> Window:
    """Label window i: 100 s of event time each."""
    return Window("labels", i, 100.0 * i, 100.0 * i + 99, n,
                  frozenset({CONCEPT}) if drifted else frozenset())


def fw(i: int, kinds: set[str]) -> Window:
    return Window("features", i, 100.0 * i, 100.0 * i + 99, 500, frozenset(kinds))


def run(windows: list[Window], rules: Rules = RULES,
        h: ModelHistory | None = None) -> tuple[ModelHistory, list[Decision]]:
    h = h or ModelHistory(rules.n)
    out: list[Decision] = []
    for w in windows:
        h.add(w)
        ds = decide(rules, h, w)
        apply(h, ds, [request_id("m", d.action, d.first_stream, d.first_window) for d in ds])
        out.extend(ds)
    return h, out


def test_no_decision_without_k_of_n_drifted_windows() -> None:
    _h, out = run([lw(0, False), lw(1, True), lw(2, False), lw(3, False), lw(4, True)])
    assert out == []


def test_concept_drift_is_requested_once_with_the_incident_first_window() -> None:
    _h, out = run([lw(0, False), lw(1, False), lw(2, True), lw(3, True), lw(4, True),
                   lw(5, True), lw(6, True)])
    assert [(d.state, d.first_window, d.window.index, d.labelled) for d in out] == [
        ("queued", 2, 3, 400)]
    assert out[0].action == "retrain" and out[0].first_stream == "labels"


def test_min_labelled_holds_the_request_in_an_open_incident() -> None:
    small = [lw(i, i >= 2, n=150) for i in range(7)]
    _h, out = run(small)
    # opened at window 3 (k=2: windows 2 and 3) with 300 labels; requested at window 4 (450)
    assert [(d.state, d.first_window, d.window.index) for d in out] == [
        ("open", 2, 3), ("queued", 2, 4)]


def test_an_incident_that_ends_before_enough_labels_is_cancelled() -> None:
    rules = Rules(RULES.actions, 2, 3, 10_000, 2, 3, "auto")
    _h, out = run([lw(0, True), lw(1, True), lw(2, False), lw(3, False), lw(4, False)], rules)
    assert [(d.state, d.first_window) for d in out] == [("open", 0), ("cancelled", 0)]


def test_in_flight_cooldown_and_budget() -> None:
    h, out = run([lw(i, True) for i in range(4)])
    assert [d.state for d in out] == ["queued"]
    # while that request is in flight, a new incident cannot be requested
    first = h.requests[0]
    h.requests = [Request(first.id, first.action, first.kind, first.first_stream,
                          first.first_window, first.first_event_time, "succeeded",
                          first.decided_stream, first.decided_window,
                          first.decided_event_time)]
    # the stream calms down, then drifts again: a second incident, after the cooldown
    h, out = run([lw(4, False), lw(5, False), lw(6, False), lw(7, True), lw(8, True),
                  lw(9, True)], h=h)
    assert [(d.state, d.first_window, d.window.index) for d in out] == [("queued", 7, 8)]


def test_manual_approval_parks_the_request() -> None:
    rules = Rules(RULES.actions, 2, 3, 0, 0, 3, "manual")
    _h, out = run([lw(0, True), lw(1, True)], rules)
    assert [d.state for d in out] == ["pending_approval"]


def test_covariate_drift_only_collects_and_label_shift_recalibrates() -> None:
    rules = Rules(RULES.actions, 2, 3, 0, 2, 3, "auto")
    _h, out = run([fw(0, {COVARIATE}), fw(1, {COVARIATE}), fw(2, {COVARIATE, LABEL_SHIFT}),
                   fw(3, {LABEL_SHIFT}), fw(4, {COVARIATE})], rules)
    assert [(d.action, d.state, d.first_window) for d in out] == [
        ("collect", "collected", 0), ("recalibrate", "queued", 2)]


def test_a_history_rebuilt_from_storage_decides_like_the_running_one() -> None:
    windows = [lw(i, i in (1, 2, 3, 4, 9, 10)) for i in range(12)]
    for cut in range(1, len(windows)):
        h, before = run(windows[:cut])
        rebuilt = ModelHistory.rebuild(3, windows[:cut], h.requests)
        _h, after = run(windows[cut:], h=rebuilt)
        _h, whole = run(windows)
        assert before + after == whole, cut


def test_replaying_the_same_windows_makes_the_same_decisions() -> None:
    windows = [lw(i, i in (2, 3, 5)) for i in range(8)]
    _h1, first = run(windows)
    _h2, again = run(windows)
    assert first == again and len(first) == 1


def test_classify_reads_each_stream() -> None:
    from detectors.results import DriftResult

    def r(name: str, drifted: bool) -> DriftResult:
        return DriftResult(detector=name, statistic=1.0, p_value=0.01, threshold=0.05,
                           drifted=drifted, n_reference=10, n_current=10, correction="none",
                           features=())

    assert classify("labels", [r("performance", True), r("label_chi2", True)]) == {CONCEPT}
    assert classify("labels", [r("ddm", True)]) == {CONCEPT}
    assert classify("features", [r("ks", True), r("label_shift", True)]) == {
        COVARIATE, LABEL_SHIFT}
    assert classify("features", [r("ks", False)]) == frozenset()
