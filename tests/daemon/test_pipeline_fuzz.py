"""Valid-JSON-but-hostile input through the whole pipeline: decode, windows, labels, evaluation.

Two models share a predictions topic and a labels topic. ``model-a`` gets only clean records
(partition 0); ``model-b`` gets clean records on partition 0 and, on partition 1, a seeded
corpus of hostile ones: huge and tiny numbers, integers beyond any float, deep but legal
nesting, long strings, unusual Unicode, far-past and far-future times, duplicate keys, and
hostile labels. The daemon must stay up, account for every hostile record (dead-lettered with
a known reason, or consumed as a valid record of ``model-b``), store no window with an
error, and store for ``model-a`` exactly what a run without the hostile records stores.
"""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from monitor.app import build_daemon
from monitor.deadletter import MemoryDeadLetter
from monitor.metrics import REJECT_REASONS, Metrics
from monitor.settings import parse_settings
from monitor.sources import Message
from monitor.synthetic import SyntheticStream

from .test_hostile_input import ListSource, label_reference

A = SyntheticStream(model="model-a", seed=31)
B = SyntheticStream(model="model-b", seed=32)
N = 3000
FIELDS = ("statistic", "p_value", "drifted", "insufficient_data", "n_current", "n_records",
          "window_start", "window_end", "offsets", "features")

WEIRD_TEXT = ["\u202eevil", "\u200b", "\x00nul", "\ud83d\ude00" * 50, "e\u0301", "\ufeff",
              "x" * 100_000, "", " ", "\U0010ffff", "NaN", "Infinity", "null"]
NUMBERS = [1e308, -1e308, 5e-324, -0.0, 0.0, 2 ** 63, -(2 ** 63) - 1, 10 ** 300, 1e-300,
           123456789012345678901234567890]
RAW_NUMBERS = ["1e999", "-1e999", str(10 ** 400), "1E400", "-0", "0.0000000000000000001"]
TIMES: list[Any] = [0, -1, 1e11, 1e12, 253402300799, "0001-01-01T00:00:00Z",
                    "9999-12-31T23:59:59Z", "1970-01-01T00:00:00+23:59", "2025-11-23T00:00:00Z",
                    -62135596800, 1.7e9]


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


def hostile(rng: random.Random, base: dict[str, Any], i: int) -> bytes:
    """One hostile variant of a clean ``model-b`` record (its model stays model-b)."""
    doc = json.loads(json.dumps(base))
    doc["request_id"] = f"hostile-{i}"
    kind = rng.randrange(9)
    if kind == 0:  # a numeric feature at the edge of (or beyond) a float
        doc["features"][rng.choice(B.numeric)] = rng.choice(NUMBERS)
    elif kind == 1:  # a categorical feature as odd text or a huge integer
        doc["features"][rng.choice(list(B.categorical))] = rng.choice([*WEIRD_TEXT, 10 ** 80])
    elif kind == 2:
        doc["timestamp"] = rng.choice(TIMES)
    elif kind == 3:  # deep but legal nesting in an extra field
        doc["extra"] = nested(rng.randrange(1, 15))
    elif kind == 4:
        doc[rng.choice(["request_id", "model_version"])] = rng.choice(WEIRD_TEXT)
    elif kind == 5:
        doc["prediction"] = rng.choice([*NUMBERS, *WEIRD_TEXT, True, 1.5])
    elif kind == 6:  # probabilities / embedding vectors with odd numbers
        doc[rng.choice(["probabilities", "embedding"])] = [rng.choice(NUMBERS) for _ in range(3)]
    text = json.dumps(doc, ensure_ascii=rng.random() < 0.5)
    if kind == 7:  # a number the encoder cannot write
        name = rng.choice(B.numeric)
        text = text.replace(f'"{name}": ', f'"{name}": {rng.choice(RAW_NUMBERS)}, "_{name}": ', 1)
    elif kind == 8:  # duplicate keys: the last one wins, and stays model-b or unknown
        text = '{"model": "model-a", ' + text[1:-1] + ', "model": "' \
            + rng.choice(["model-b", "model-c", "model-b\u0000"]) + '"}'
    return text.encode("utf-8", "surrogatepass")


def hostile_label(rng: random.Random, i: int) -> bytes:
    doc: dict[str, Any] = {"request_id": f"hostile-{rng.randrange(2 * i + 1)}",
                           "label": rng.choice([*NUMBERS, *WEIRD_TEXT, True, None, [1], {}]),
                           "timestamp": rng.choice(TIMES)}
    if rng.random() < 0.3:
        doc["model"] = rng.choice(["model-b", "nope", 7, ""])
    text = json.dumps(doc)
    if rng.random() < 0.2:
        text = text[:-1] + ', "label": ' + rng.choice(RAW_NUMBERS) + "}"
    return text.encode("utf-8", "surrogatepass")


def messages(with_hostile: bool) -> tuple[list[Message], int]:
    rng = random.Random(5)
    ra, rb = list(A.records(N)), list(B.records(N))
    out: list[Message] = []
    hostile_msgs: list[Message] = []
    n_hostile = 0
    for i in range(N):
        out.append(Message("logs", 0, 2 * i, json.dumps(ra[i]).encode()))
        out.append(Message("logs", 0, 2 * i + 1, json.dumps(rb[i]).encode()))
        label_a = {"request_id": ra[i]["request_id"], "label": i % 2,
                   "timestamp": ra[i]["timestamp"] + 2}
        label_b = {"request_id": rb[i]["request_id"], "label": (i // 2) % 2,
                   "timestamp": rb[i]["timestamp"] + 2}
        out.append(Message("labels", 0, 2 * i, json.dumps(label_a).encode()))
        out.append(Message("labels", 0, 2 * i + 1, json.dumps(label_b).encode()))
        if with_hostile and i % 3 == 0:
            hostile_msgs.append(Message("logs", 1, n_hostile, hostile(rng, rb[i], i)))
            hostile_msgs.append(Message("labels", 1, n_hostile, hostile_label(rng, i)))
            n_hostile += 1
    # hostile records interleaved at random places, each partition in offset order
    places = sorted(rng.randrange(len(out) + 1) for _ in hostile_msgs)
    merged: list[Message] = []
    j = 0
    for k, msg in enumerate(out):
        while j < len(places) and places[j] == k:
            merged.append(hostile_msgs[j])
            j += 1
        merged.append(msg)
    merged.extend(hostile_msgs[j:])
    return merged, 2 * n_hostile


def run(tmp_path: Path, with_hostile: bool) -> tuple[Any, MemoryDeadLetter, int, int]:
    models = []
    for s, window in ((A, {"kind": "count", "size": 500}),
                      (B, {"kind": "time", "seconds": 5.0})):
        ref = s.write_reference_csv(tmp_path / f"ref-{s.model}.csv", 2000)
        doc = s.settings_doc(ref, 500)
        doc["window"] = window
        doc["labels"] = {"reference": {"path": str(label_reference(tmp_path))},
                         "window_size": 300, "horizon_seconds": 3600,
                         "streaming": [{"kind": "ddm"}]}
        models.append(doc)
    settings = parse_settings({
        "storage": {"url": f"sqlite:///{tmp_path / ('h' if with_hostile else 'c')}.db"},
        "source": {"kafka": {"topics": ["logs"], "labels_topic": "labels"}},
        "models": models}, env={})
    msgs, n_hostile = messages(with_hostile)
    dead = MemoryDeadLetter()
    source = ListSource(msgs, batch=333)
    d = build_daemon(settings, source=source, dead_letter=dead, serve_metrics=False,
                     metrics=Metrics(CollectorRegistry()))
    d.pipeline.run(threading.Event(), until_exhausted=True)
    return d, dead, n_hostile, len(msgs)


def by_key(rows: list[dict[str, Any]]) -> dict[tuple[int, str], dict[str, Any]]:
    return {(r["window_index"], r["detector"]): {f: r[f] for f in FIELDS} for r in rows}


def test_hostile_records_change_no_clean_result_and_stop_nothing(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "h").mkdir()
    clean, _, _, _ = run(tmp_path / "c", with_hostile=False)
    dirty, dead, n_hostile, _total = run(tmp_path / "h", with_hostile=True)
    get = dirty.metrics.registry.get_sample_value
    # every hostile record accounted for: dead-lettered with a known reason, or consumed
    hostile_dead = [(m, e) for m, e in dead.records if m.partition == 1]
    assert all(e.reason in REJECT_REASONS and e.detail for _m, e in hostile_dead)
    consumed_b = get("driftline_records_consumed_total", {"model": "model-b"})
    # accepted hostile records may close model-b's time windows early, so some of its clean
    # records arrive late: dead-lettered too, with their reason (never silently dropped)
    clean_b_late = [e for m, e in dead.records if m.partition == 0]
    assert all(e.reason == "late" and "model-b" in e.detail for e in clean_b_late)
    accepted_records = consumed_b - (N - len(clean_b_late))
    labels_seen = sum(get("driftline_labels_total", {"outcome": o}) or 0
                      for o in ("joined", "late", "orphan", "invalid", "replayed"))
    assert len([m for m, _e in hostile_dead if m.topic == "logs"]) + accepted_records \
        == n_hostile // 2
    assert len([m for m, _e in hostile_dead if m.topic == "labels"]) > 0
    assert labels_seen >= 2 * N  # the clean labels all went through the join
    assert get("driftline_window_errors_total", {"model": "model-b"}) == 0
    assert get("driftline_window_errors_total", {"model": "model-a"}) == 0
    # model-a's results, features and labels, are those of the run without hostile input
    for stream in ("features", "labels"):
        want = by_key(clean.store.results("model-a", stream))
        got = by_key(dirty.store.results("model-a", stream))
        assert want and got == want, stream
    # and model-b's windows were all tested (no error rows)
    assert dirty.store.results("model-b")
