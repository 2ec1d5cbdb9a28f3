"""When drift becomes a retraining request: a pure function of what storage holds.

Every stored window is classified into the drift kinds it shows:

* ``concept``: a labels-stream window whose performance test or a streaming detector
  (DDM, ADWIN, Page-Hinkley) flagged drift;
* ``label_shift``: a features-stream window whose ``label_shift`` (BBSE) result flagged;
* ``covariate``: a features-stream window where any other detector flagged (features,
  predictions, embeddings).

An **incident** of a kind opens when ``k`` of the stream's last ``n`` windows show it; its
first window (the earliest flagged one among those ``n``) names it for good, so replaying
the same stream after a crash finds the same incident. It stays open until ``n`` windows in a
row do not show the kind. While open, its action (``models[].retrain.actions``) is requested
once the guard-rails allow: ``min_labelled`` joined labels since the incident's first
window, no request of the model in flight, ``cooldown_windows`` after the last request,
``max_per_day`` requests per 24 h of event time. ``collect`` never trains: the incident is
recorded and the labelled data captured. Label shift while the labels stream shows concept
drift is left to the concept incident.

Nothing here reads the wall clock: windows and event time only.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from detectors.results import DriftResult

CONCEPT, LABEL_SHIFT, COVARIATE = "concept", "label_shift", "covariate"
#: States of a request that still occupies its model (at most one per model).
IN_FLIGHT = frozenset({"pending_approval", "queued", "dispatched", "running"})
#: States after which the incident is over for good.
TERMINAL = frozenset({"succeeded", "failed", "rejected", "cancelled", "collected",
                      "promoted", "rolled_back"})
#: Detectors of the labels stream that signal concept drift.
_CONCEPT_DETECTORS = frozenset({"performance", "ddm", "adwin", "page_hinkley"})


class Verdict(Protocol):
    @property
    def detector(self) -> str: ...

    @property
    def drifted(self) -> bool: ...


def classify(stream: str, results: Iterable[Verdict | DriftResult]) -> frozenset[str]:
    """The drift kinds one window's results show."""
    kinds: set[str] = set()
    for r in results:
        if not r.drifted:
            continue
        if stream == "labels":
            if r.detector in _CONCEPT_DETECTORS:
                kinds.add(CONCEPT)
        elif r.detector == "label_shift":
            kinds.add(LABEL_SHIFT)
        elif r.detector != "model":  # the model verdict restates the others
            kinds.add(COVARIATE)
    return frozenset(kinds)


@dataclass(frozen=True)
class Window:
    stream: str
    index: int
    start: float  # event time
    end: float
    n_records: int
    kinds: frozenset[str]


@dataclass(frozen=True)
class Request:
    """What the policy needs to know of a stored request."""

    id: str
    action: str
    kind: str
    first_stream: str
    first_window: int
    first_event_time: float
    state: str
    decided_stream: str | None = None
    decided_window: int | None = None
    decided_event_time: float | None = None


@dataclass(frozen=True)
class Rules:
    actions: dict[str, str]  # kind -> action
    k: int
    n: int
    min_labelled: int
    cooldown_windows: int
    max_per_day: int
    approval: str  # auto | manual


@dataclass(frozen=True)
class Decision:
    """Insert (if absent) or move the incident ``(action, first_stream, first_window)``."""

    kind: str
    action: str
    first_stream: str
    first_window: int
    first_event_time: float
    state: str  # open | pending_approval | queued | collected
    labelled: int
    window: Window  # the window that decided
    reason: str


@dataclass
class ModelHistory:
    """The stored facts the decisions depend on, for one model (rebuilt on restart).

    ``quiet`` counts, per drift kind, the windows in a row (of that kind's stream) that did
    not show it: an episode of drift is over after ``n`` of them, and only then may a new
    incident of that kind open (a long drift is one incident, not one every k windows).
    """

    n: int
    recent: dict[str, deque[Window]] = field(default_factory=dict)
    label_windows: list[Window] = field(default_factory=list)  # since the oldest open incident
    requests: list[Request] = field(default_factory=list)
    quiet: dict[str, int] = field(default_factory=dict)
    ended: dict[str, bool] = field(default_factory=dict)

    def add(self, w: Window) -> None:
        self.recent.setdefault(w.stream, deque(maxlen=self.n)).append(w)
        if w.stream == "labels":
            self.label_windows.append(w)
            if not any(r.state == "open" for r in self.requests):
                del self.label_windows[:-self.n]  # a new incident starts within the last n
        for kind, stream in _STREAM_OF.items():
            if stream != w.stream:
                continue
            self.quiet[kind] = 0 if kind in w.kinds else self.quiet.get(kind, 0) + 1
            if self.quiet[kind] >= self.n:
                self.ended[kind] = True

    def opened(self, kind: str) -> None:
        self.ended[kind] = False
        self.quiet[kind] = 0

    @classmethod
    def rebuild(cls, n: int, windows: Sequence[Window], requests: Sequence[Request]
                ) -> ModelHistory:
        """The history as it was after ``windows`` (oldest first; every window of a stream
        since its latest incident's first window, at least its last ``n``)."""
        h = cls(n, requests=list(requests))
        latest: dict[str, int] = {}
        for r in requests:
            latest[r.kind] = max(latest.get(r.kind, -1), r.first_window)
        for w in windows:
            h.add(w)
            for kind, first in latest.items():
                if _STREAM_OF[kind] == w.stream and w.index == first:
                    h.opened(kind)
        return h

    def labelled_since(self, event_time: float) -> int:
        return sum(w.n_records for w in self.label_windows if w.end >= event_time)


_STREAM_OF = {CONCEPT: "labels", LABEL_SHIFT: "features", COVARIATE: "features"}


def decide(rules: Rules, h: ModelHistory, w: Window) -> list[Decision]:
    """What the window ``w`` (just added to ``h``) changes; empty: nothing."""
    out: list[Decision] = []
    recent = list(h.recent.get(w.stream, ()))
    for kind, stream in _STREAM_OF.items():
        action = rules.actions.get(kind, "none")
        if stream != w.stream or action == "none":
            continue
        if kind == LABEL_SHIFT and _concept_now(h):
            continue  # performance moved too: the concept incident covers it
        incident, quiet = _open_incident(h, action, kind)
        flagged = [x for x in recent if kind in x.kinds]
        if incident is not None and quiet:
            labelled = h.labelled_since(incident.first_event_time)
            out.append(Decision(kind, action, incident.first_stream, incident.first_window,
                                incident.first_event_time, "cancelled", labelled, w,
                                f"drift ended ({h.n} quiet windows) before the guard-rails "
                                "allowed a request"))
            incident = None
        if incident is None:
            if len(flagged) < rules.k or not h.ended.get(kind, True):
                continue  # not (yet) drifting, or still the episode of the last incident
            first = flagged[0]
            incident = Request("", action, kind, first.stream, first.index, first.start, "new")
            h.opened(kind)
        elif incident.state != "open":
            continue  # requested already (or collected): one request per incident
        out.extend(_advance(rules, h, w, incident))
    return out


def _advance(rules: Rules, h: ModelHistory, w: Window, inc: Request) -> list[Decision]:
    labelled = h.labelled_since(inc.first_event_time)

    def decision(state: str, reason: str) -> Decision:
        return Decision(inc.kind, inc.action, inc.first_stream, inc.first_window,
                        inc.first_event_time, state, labelled, w, reason)

    if inc.action == "collect":
        return [decision("collected", f"{inc.kind} drift: incident recorded, labelled data "
                         "captured, no training (action collect)")]
    waiting = _guard(rules, h, w, labelled, inc)
    if waiting is not None:
        return [decision("open", waiting)] if inc.state == "new" else []
    state = "pending_approval" if rules.approval == "manual" else "queued"
    return [decision(state, f"{inc.kind} drift since {inc.first_stream} window "
                     f"{inc.first_window}; {labelled} labelled records")]


def _guard(rules: Rules, h: ModelHistory, w: Window, labelled: int,
           inc: Request) -> str | None:
    """Why the request must wait (None: it may go now)."""
    if labelled < rules.min_labelled:
        return f"waiting for labels: {labelled} of {rules.min_labelled}"
    if any(r.state in IN_FLIGHT for r in h.requests):
        return "another request of this model is in flight"
    decided = [r for r in h.requests if r.decided_window is not None and r.action != "collect"]
    same_stream = [r for r in decided if r.decided_stream == w.stream]
    if same_stream:
        last = max(r.decided_window or 0 for r in same_stream)
        if w.index - last <= rules.cooldown_windows:
            return f"cooling down: {w.index - last} of {rules.cooldown_windows} windows"
    day = [r for r in decided if (r.decided_event_time or 0) > w.end - 86_400]
    if len(day) >= rules.max_per_day:
        return f"daily budget spent: {len(day)} of {rules.max_per_day} requests"
    return None


def _open_incident(h: ModelHistory, action: str, kind: str) -> tuple[Request | None, bool]:
    """The model's incident of this kind that is not over yet, and whether the stream has
    been quiet for ``n`` windows since it opened (an incident still waiting then ends)."""
    live = [r for r in h.requests if r.kind == kind and r.action == action
            and r.state not in TERMINAL]
    if not live:
        return None, False
    inc = live[-1]
    return inc, inc.state == "open" and h.ended.get(kind, False)


def _concept_now(h: ModelHistory) -> bool:
    return any(CONCEPT in x.kinds for x in h.recent.get("labels", ()))


def apply(h: ModelHistory, decisions: Sequence[Decision], ids: Sequence[str]) -> None:
    """Record the decisions (with their stored ids) in ``h`` so the next window sees them."""
    for d, rid in zip(decisions, ids, strict=True):
        h.requests = [r for r in h.requests if r.id != rid]
        decided = d.state != "open"
        h.requests.append(Request(
            rid, d.action, d.kind, d.first_stream, d.first_window, d.first_event_time,
            d.state, d.window.stream if decided else None,
            d.window.index if decided else None, d.window.end if decided else None))
