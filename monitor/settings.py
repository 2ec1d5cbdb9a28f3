"""Settings: one YAML file plus environment overrides, validated once at start-up.

Environment variables named ``DRIFTLINE__KEY__SUBKEY`` override ``key.subkey`` in the file
(``DRIFTLINE__MODELS__0__ALPHA=0.01`` reaches into lists by index). Values are parsed as YAML
scalars, so ``true``, ``10`` and ``[a, b]`` work. This is the only module that reads
``os.environ``. Relative reference paths resolve against the file's folder (a relative
SQLite path in ``storage.url`` against the working directory, as SQLAlchemy does).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from detectors.registry import CONFIGURABLE, MATRIX, SPECS, backend_problem, unknown_key
from detectors.streaming import ADWIN, DDM, PageHinkley
from monitor.errors import ConfigError

ENV_PREFIX = "DRIFTLINE__"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeatureSettings(_Strict):
    name: str = Field(min_length=1)
    type: Literal["numeric", "categorical"]


class CountWindow(_Strict):
    kind: Literal["count"] = "count"
    size: int = Field(gt=1, description="Records per tumbling window.")


class TimeWindow(_Strict):
    kind: Literal["time"] = "time"
    seconds: float = Field(gt=0, description="Window length in event time.")
    allowed_lateness_seconds: float = Field(
        default=0, ge=0,
        description="How long after a window's end records may still arrive for it.")
    min_records: int = Field(
        default=2, ge=1, description="A window with fewer records is not tested: each of its "
        "detectors reports insufficient_data.")


Window = Annotated[CountWindow | TimeWindow, Field(discriminator="kind")]
Correction = Literal["bonferroni", "benjamini-hochberg", "none"]


#: The kinds a model's ``detectors[]`` list accepts (from :data:`detectors.registry.SPECS`).
DETECTOR_KINDS: tuple[str, ...] = CONFIGURABLE
#: Multivariate detectors: one test over all the selected numeric features together.
MULTIVARIATE = frozenset(k for k in CONFIGURABLE if SPECS[k].input == MATRIX)
_DEVICE = r"^(cpu|cuda|cuda:\d+|auto)$"


class DetectorSettings(_Strict):
    """One entry of a model's ``detectors[]``.

    Which keys a kind takes is the registry's (:data:`detectors.registry.SPECS`, field
    ``keys``): a key the kind does not use is an error naming it, never silently ignored.
    The fields below only give each key's type and bounds (one meaning for every kind).
    """

    kind: str = Field(description="A detector kind: " + ", ".join(DETECTOR_KINDS) + ".")
    features: tuple[str, ...] | None = Field(
        default=None, description="Features to test; default: every feature of a type the "
        "detector supports.")
    alpha: float | None = Field(default=None, gt=0, lt=1)
    correction: Correction | None = None
    threshold: float | None = Field(
        default=None, gt=0, description="Distance detectors (psi, kl, js, wasserstein) only.")
    min_expected: float | None = Field(
        default=None, ge=0, description="chi2 only: pool categories whose smallest "
        "expected count is below this (default 5; 0: no pooling).")
    n_permutations: int = Field(default=1000, ge=10, description="mmd only.")
    backend: Literal["numpy", "torch"] = Field(default="numpy", description="mmd only.")
    device: str = Field(default="cpu", pattern=_DEVICE,
                        description="mmd only, with backend torch.")
    max_n: int | None = Field(default=None, ge=10, description="mmd, c2st: subsample each "
                              "side to this.")

    @model_validator(mode="before")
    @classmethod
    def _keys_fit_kind(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            problem = unknown_key(str(data.get("kind")), [str(k) for k in data])
            if problem is not None:
                raise ValueError(problem)
        return data

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        if v not in DETECTOR_KINDS:
            raise ValueError(f"unknown detector kind {v!r}; valid kinds: "
                             f"{', '.join(DETECTOR_KINDS)}")
        return v

    @model_validator(mode="after")
    def _runs_where_configured(self) -> DetectorSettings:
        if "backend" in SPECS[self.kind].keys:
            problem = backend_problem(self.kind, self.backend, self.device)
            if problem is not None:
                raise ValueError(problem)
        return self


class ReferenceSettings(_Strict):
    path: Path
    format: Literal["auto", "csv", "jsonl", "parquet"] = "auto"


class StreamingDetectorSettings(_Strict):
    """A streaming detector over the per-record error stream of joined labels."""

    kind: Literal["ddm", "adwin", "page_hinkley"]
    params: Mapping[str, float | int | str] = Field(
        default_factory=dict, description="Constructor arguments, e.g. {delta: 0.002}.")

    @model_validator(mode="after")
    def _params_accepted(self) -> StreamingDetectorSettings:
        cls = {"ddm": DDM, "adwin": ADWIN, "page_hinkley": PageHinkley}[self.kind]
        try:
            cls(**self.params)
        except TypeError as exc:
            raise ValueError(f"{self.kind} params: {exc}") from None
        except ValueError as exc:
            raise ValueError(f"{self.kind} params: {exc}") from None
        return self


class LabelSettings(_Strict):
    """Delayed labels for a model: joined to its predictions, tested for concept drift."""

    reference: ReferenceSettings = Field(
        description="Labelled reference data: columns 'label' and 'prediction'.")
    task: Literal["classification", "regression"] = "classification"
    test: Literal["fisher", "chi2", "ks"] | None = None
    window_size: int = Field(default=1000, gt=1)
    horizon_seconds: float = Field(default=86_400, gt=0)
    max_waiting: int = Field(default=100_000, gt=0)
    min_samples: int = Field(default=30, ge=1)
    streaming: tuple[StreamingDetectorSettings, ...] = Field(
        default=(), description="DDM / ADWIN / Page-Hinkley over the per-record errors "
        "(classification) or absolute residuals (regression).")

    @model_validator(mode="after")
    def _test_fits_task(self) -> LabelSettings:
        allowed = {"classification": {"fisher", "chi2"}, "regression": {"ks"}}[self.task]
        if self.test is not None and self.test not in allowed:
            raise ValueError(f"test '{self.test}' does not apply to {self.task}; "
                             f"use one of {sorted(allowed)}")
        kinds = [d.kind for d in self.streaming]
        for i, kind in enumerate(kinds):
            if kind in kinds[:i]:
                raise ValueError(f"streaming[{i}]: detector '{kind}' is listed twice")
            if kind == "ddm" and self.task == "regression":
                raise ValueError(f"streaming[{i}]: ddm watches binary errors; a regressor's "
                                 "residuals need adwin or page_hinkley")
        return self


class EmbeddingModel(_Strict):
    """The deployed model, from local files only."""

    kind: Literal["sentence-transformers", "transformers", "torchscript", "state-dict"]
    path: Path = Field(description="Model folder, TorchScript file, or state-dict weights.")
    factory: str | None = Field(default=None, pattern=r"^[\w.]+:[\w]+$",
                                description="state-dict: 'package.module:function'.")
    shape: tuple[int, ...] | None = Field(default=None, description="Array models' input shape.")
    dtype: str = "float32"
    max_length: int | None = Field(default=None, gt=0, description="Text: token limit.")

    @model_validator(mode="after")
    def _fields_fit_kind(self) -> EmbeddingModel:
        if self.kind == "state-dict" and not self.factory:
            raise ValueError("kind 'state-dict' needs 'factory' (package.module:function)")
        if self.kind in ("torchscript", "state-dict") and not self.shape:
            raise ValueError(f"kind '{self.kind}' takes numeric arrays: set 'shape'")
        return self


class EmbeddingReduction(_Strict):
    kind: Literal["pca", "random", "none"] = "pca"
    components: int = Field(default=10, gt=0)
    # PCA is fitted on this share of the reference and never on the rows the tests use:
    # fitting on the tested sample makes unshifted windows look shifted.
    fit_fraction: float = Field(default=0.5, gt=0, lt=1)


class EmbeddingSettings(_Strict):
    """Drift in the deployed model's own feature space (the records' ``input`` field)."""

    model: EmbeddingModel
    reference: ReferenceSettings = Field(
        description="JSONL: inference records (their 'input') or {'text': ...} / "
        "{'array': [...]} objects.")
    layers: tuple[str, ...] | None = Field(
        default=None, description="Module names to read; default the penultimate layer.")
    bbsd: bool = Field(default=False, description="Capture the softmax outputs for BBSD even "
                       "if the layers do not include them (a classifier's default do).")
    reduction: EmbeddingReduction = Field(default_factory=EmbeddingReduction)
    device: str = Field(default="auto", pattern=_DEVICE)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    batch_size: int = Field(default=256, gt=0)
    n_permutations: int = Field(default=1000, ge=10)
    test: Literal["mmd", "mmd_agg"] = Field(
        default="mmd", description="embedding_mmd's test: mmd (median bandwidth) or mmd_agg "
        "(five bandwidths, min-p corrected).")
    mmd_backend: Literal["numpy", "torch"] = "numpy"
    mmd_device: str = Field(default="cpu", pattern=_DEVICE,
                            description="Where embedding_mmd runs: cuda needs mmd_backend torch.")

    @model_validator(mode="after")
    def _mmd_runs_where_configured(self) -> EmbeddingSettings:
        problem = backend_problem("embedding_mmd", self.mmd_backend, self.mmd_device)
        if problem is not None:
            raise ValueError(problem)
        return self


class PredictionDriftSettings(_Strict):
    """Drift of the model's outputs: the reference file needs a 'prediction' column."""

    task: Literal["classification", "regression"] = "classification"
    label_shift: bool = Field(
        default=False, description="Black Box Shift Estimation of per-class weights; the "
        "reference needs a 'label' column next to 'prediction'.")
    confidence: float = Field(default=0.95, gt=0, lt=1,
                              description="Level of the label-shift weights' intervals.")

    @model_validator(mode="after")
    def _label_shift_classifies(self) -> PredictionDriftSettings:
        if self.label_shift and self.task != "classification":
            raise ValueError("label_shift estimates class weights: it needs task "
                             "'classification'")
        return self


Action = Literal["retrain", "recalibrate", "collect", "none"]


class RetrainActions(_Strict):
    """What each kind of drift leads to."""

    concept: Action = Field(default="retrain", description="The labels stream drifted "
                            "(performance test or a streaming detector).")
    label_shift: Action = Field(default="recalibrate", description="Label-shift weights "
                                "significant while performance has not drifted.")
    covariate: Action = Field(default="collect", description="Feature, prediction or "
                              "embedding drift alone: open an incident, capture labels.")


class Debounce(_Strict):
    k: int = Field(default=2, ge=1)
    n: int = Field(default=3, ge=1)

    @model_validator(mode="after")
    def _k_within_n(self) -> Debounce:
        if self.k > self.n:
            raise ValueError(f"k ({self.k}) must not exceed n ({self.n})")
        return self


class BackendSettings(_Strict):
    """Where a retraining request is sent (``kind``), and how."""

    kind: Literal["builtin", "command", "webhook", "kafka", "ray"]
    command: tuple[str, ...] | None = Field(
        default=None, description="command: argv; the request is JSON on stdin and in "
        "DRIFTLINE_REQUEST_* environment variables.")
    nproc: int = Field(default=1, ge=1, description="builtin: processes (torchrun when > 1).")
    url: str | None = Field(default=None, pattern=r"^https?://",
                            description="webhook: the endpoint (http:// or https://).")
    secret_file: Path | None = Field(default=None, description="webhook: HMAC-SHA256 key.")
    topic: str | None = Field(default=None, description="kafka: CloudEvents topic.")
    address: str | None = Field(default=None, pattern=r"^https?://",
                                description="ray: the Ray Jobs API (the dashboard address).")
    entrypoint: str = Field(
        default="driftline retrain run --config {config} --model {model} --request {id}",
        description="ray: the job's shell command; {id}, {model}, {action}, {config} filled in.")
    jobs_dir: Path = Field(default=Path("driftline-jobs"), description="builtin: job logs and "
                           "result files (relative to the settings file).")
    registry: Path = Field(default=Path("driftline-registry"), description="builtin: the model "
                           "registry the job writes and the daemon serves the champion of "
                           "(relative to the settings file).")
    job_args: tuple[str, ...] = Field(default=(), description="builtin: extra arguments of "
                                      "'driftline retrain run' (e.g. --max-reference-drop 0.1).")
    timeout_seconds: float = Field(default=30, gt=0)
    max_attempts: int = Field(default=5, ge=1)
    backoff_seconds: float = Field(default=5, gt=0)

    @model_validator(mode="after")
    def _fields_fit_kind(self) -> BackendSettings:
        need = {"command": "command", "webhook": "url", "kafka": "topic",
                "ray": "address"}.get(self.kind)
        if need and getattr(self, need) is None:
            raise ValueError(f"kind '{self.kind}' needs '{need}'")
        if self.kind == "webhook" and self.secret_file is not None \
                and not os.access(self.secret_file, os.R_OK):
            raise ValueError(f"secret_file: cannot read {self.secret_file}")
        return self


class CaptureSettings(_Strict):
    max_rows: int = Field(default=200_000, gt=0, description="Per model; oldest dropped first.")
    retention_seconds: float = Field(default=30 * 86_400, gt=0,
                                     description="In event time, behind the newest record.")


class RetrainSettings(_Strict):
    """When drift leads to a retraining request, with guard-rails (event time, windows)."""

    actions: RetrainActions = Field(default_factory=RetrainActions)
    debounce: Debounce = Field(default_factory=Debounce)
    min_labelled: int = Field(default=2_000, ge=0, description="Joined labels since the "
                              "incident opened before retrain/recalibrate is requested.")
    cooldown_windows: int = Field(default=10, ge=0, description="Windows (of the stream that "
                                  "decided) after a request before the next one.")
    max_per_day: int = Field(default=3, ge=1, description="Requests per model per 24 h of "
                             "event time.")
    approval: Literal["auto", "manual"] = "auto"
    action: BackendSettings
    capture: CaptureSettings = Field(default_factory=CaptureSettings)


class VerdictSettings(_Strict):
    """The model verdict: one alarm per window over all of the model's detectors."""

    method: Literal["holm", "bonferroni"] = Field(
        default="holm", description="Family-wise correction across the detectors (each "
        "already corrected across its features); both give the same verdict.")


class FalseAlarmSettings(_Strict):
    """How often the model verdict may alarm on data without drift (set one of the two).

    driftline derives from it a k-of-n rule over consecutive window verdicts
    (:func:`detectors.alarms.debounce`) at the model's ``alpha``, and logs the expected
    time between false alarms it gives.
    """

    every_windows: float | None = Field(
        default=None, gt=1, description="At most one false alarm per this many windows.")
    every_days: float | None = Field(
        default=None, gt=0, description="At most one false alarm per this many days, at the "
        "window rate: a time window's, or the observed one for count windows.")
    max_n: int = Field(default=6, ge=1, le=10, description="Longest k-of-n rule (windows "
                       "of delay before an alarm once drift starts).")

    @model_validator(mode="after")
    def _one_of(self) -> FalseAlarmSettings:
        if (self.every_windows is None) == (self.every_days is None):
            raise ValueError("set exactly one of every_windows and every_days")
        return self


class ModelSettings(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    version: str | None = None
    reference: ReferenceSettings
    features: tuple[FeatureSettings, ...] = Field(min_length=1)
    window: Window
    detectors: tuple[DetectorSettings, ...] | None = Field(
        default=None, description="Default: ks on numeric features, chi2 on categorical ones.")
    alpha: float = Field(default=0.05, gt=0, lt=1)
    correction: Correction = "bonferroni"
    labels: LabelSettings | None = None
    embedding: EmbeddingSettings | None = None
    prediction_drift: PredictionDriftSettings | None = None
    retrain: RetrainSettings | None = None
    verdict: VerdictSettings = Field(default_factory=VerdictSettings)
    false_alarms: FalseAlarmSettings | None = Field(
        default=None, description="Default: every window whose verdict is drifted alarms.")

    @model_validator(mode="after")
    def _retrain_debounce_from_false_alarms(self) -> ModelSettings:
        """Issue 12: ``false_alarms`` sets the k-of-n rule of the model verdict and of the
        retraining policy alike, unless ``retrain.debounce`` is given. Derived here, once,
        so the policy stays a function of the settings and the stored windows (a count
        window's ``every_days`` uses the verdict's assumed rate, not the observed one)."""
        if (self.retrain is None or self.false_alarms is None
                or "debounce" in self.retrain.model_fields_set):
            return self
        from detectors.alarms import debounce
        from monitor.evaluate import ASSUMED_WINDOWS_PER_DAY

        fa = self.false_alarms
        if fa.every_windows is not None:
            every = fa.every_windows
        else:
            per_day = (86_400.0 / self.window.seconds if isinstance(self.window, TimeWindow)
                       else ASSUMED_WINDOWS_PER_DAY)
            every = max(float(fa.every_days or 0) * per_day, 1.0 + 1e-9)
        rule = debounce(self.alpha, every, fa.max_n)
        retrain = self.retrain.model_copy(update={"debounce": Debounce(k=rule.k, n=rule.n)})
        object.__setattr__(self, "retrain", retrain)  # frozen: the derived default in place
        return self

    @field_validator("features")
    @classmethod
    def _unique_features(cls, v: tuple[FeatureSettings, ...]) -> tuple[FeatureSettings, ...]:
        names = [f.name for f in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate feature names: {', '.join(dupes)}")
        return v

    @model_validator(mode="after")
    def _detector_features_exist(self) -> ModelSettings:
        kinds = {f.name: f.type for f in self.features}
        seen: set[str] = set()
        for i, det in enumerate(self.detectors or ()):
            if det.kind in seen:
                raise ValueError(f"detectors[{i}]: detector '{det.kind}' is listed twice")
            seen.add(det.kind)
            info = SPECS[det.kind]
            alpha = det.alpha or self.alpha
            if info.alpha_range is not None and not (
                    info.alpha_range[0] < alpha <= info.alpha_range[1]):
                low, high = info.alpha_range
                raise ValueError(f"detectors[{i}] ({det.kind}): its p-values lie in [{low}, "
                                 f"{high}], so alpha must be in ({low}, {high}], got {alpha}")
            if "n_permutations" in info.keys and 1 / (det.n_permutations + 1) >= alpha:
                raise ValueError(
                    f"detectors[{i}] ({det.kind}): with n_permutations={det.n_permutations} "
                    f"the smallest p-value is 1/{det.n_permutations + 1}, not below "
                    f"alpha={alpha}: raise n_permutations above {int(1 / alpha)}")
            supported = info.feature_types
            if det.features is None and not any(k in supported for k in kinds.values()):
                raise ValueError(f"detectors[{i}] ({det.kind}) has no "
                                 f"{' or '.join(sorted(supported))} features to test")
            for name in det.features or ():
                if name not in kinds:
                    raise ValueError(f"detectors[{i}] names unknown feature '{name}'")
                if kinds[name] not in supported:
                    raise ValueError(
                        f"detectors[{i}] ({det.kind}) needs {' or '.join(sorted(supported))} "
                        f"features, '{name}' is {kinds[name]}")
        e = self.embedding
        if e is not None and 1 / (e.n_permutations + 1) >= self.alpha:  # never could flag
            raise ValueError(f"embedding: with n_permutations={e.n_permutations} the smallest "
                             f"p-value is 1/{e.n_permutations + 1}, not below alpha="
                             f"{self.alpha}: raise n_permutations above {int(1 / self.alpha)}")
        return self


class KafkaSettings(_Strict):
    bootstrap_servers: str = "localhost:9092"
    topics: tuple[str, ...] = ("inference-logs",)
    labels_topic: str | None = None
    group_id: str = "driftline"
    dead_letter_topic: str = "driftline-dead-letter"
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    poll_timeout_ms: int = Field(default=500, ge=0)
    max_poll_records: int = Field(default=5000, ge=1)
    # The client library (README "Kafka clients"); both give the same delivery guarantees.
    # confluent-kafka by default: measured 1.8x faster end to end on a quiet VM
    # (benchmarks/bench_ingest_kafka).
    client: Literal["kafka-python", "confluent-kafka"] = "confluent-kafka"
    # Passed through to kafka-python unchanged (security_protocol, sasl_mechanism,
    # sasl_plain_username, ssl_cafile, ...). A key ending in "_file" names a file whose
    # content is the value of the key without the suffix (sasl_plain_password_file), read
    # only when the client is built. Never logged. With confluent-kafka, these names and those
    # of `consumer`/`producer` are translated to librdkafka's (monitor/kafka_confluent.py).
    security: Mapping[str, Any] = Field(default_factory=dict)
    consumer: Mapping[str, Any] = Field(default_factory=dict)
    producer: Mapping[str, Any] = Field(default_factory=dict)


    @field_validator("security")
    @classmethod
    def _secret_files_readable(cls, v: Mapping[str, Any]) -> Mapping[str, Any]:
        for key, value in v.items():
            if key.endswith("_file") and key[:-5] in v:
                raise ValueError(f"set either '{key[:-5]}' or '{key}', not both")
            if key.endswith("_file") and not os.access(str(value), os.R_OK):
                raise ValueError(f"'{key}': cannot read secret file {value}")
        return v


class SourceSettings(_Strict):
    kind: Literal["kafka"] = "kafka"
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)


class MetricsSettings(_Strict):
    address: str = "0.0.0.0"  # noqa: S104 - a daemon's /metrics is meant to be scraped
    port: int = Field(default=9108, ge=0, le=65535)


class DaemonSettings(_Strict):
    # "auto": one consumer process per core this process may run on (see monitor.supervisor).
    workers: Literal["auto"] | int = Field(
        default="auto", description="Consumer processes of `driftline run`: auto (the "
        "cores) or a number >= 1; 1 runs in-process, no supervisor.")

    @field_validator("workers")
    @classmethod
    def _at_least_one(cls, v: Literal["auto"] | int) -> Literal["auto"] | int:
        if v != "auto" and (isinstance(v, bool) or v < 1):
            raise ValueError(f"must be 'auto' or a number >= 1, got {v!r}")
        return v


class StorageSettings(_Strict):
    url: str = "sqlite:///driftline.db"
    # Prepared reference state per model (see monitor/refstate.py); "" turns it off.
    reference_cache_dir: str = "~/.cache/driftline/reference"


class LimitsSettings(_Strict):
    max_record_bytes: int = Field(default=1 << 20, gt=0)
    # Event time is checked against the wall clock (future) and the broker's timestamp, or
    # the wall clock without one (past): one record dated 9999 would otherwise close every
    # time window at once and move the label watermark past every stored prediction.
    max_future_seconds: float = Field(
        default=3600, ge=0, description="Reject records dated more than this ahead of now.")
    max_past_seconds: float | None = Field(
        default=None, gt=0, description="Reject records dated more than this before their "
        "broker timestamp (or now); default: no bound, since backfills are legitimate.")


class AlertSettings(_Strict):
    """Links the drift alert carries (exported as ``driftline_alert_links_info``)."""

    dashboard_url: str = Field(
        default="http://localhost:3000/d/driftline-overview/driftline-overview?var-model={model}",
        description="The Grafana dashboard of a model; {model} is replaced by its name.")
    runbook_url: str = Field(
        default="", description="Your copy of docs/runbook.md (what to do when an alert "
        "fires); {model} is replaced by the model's name. Empty: the alert names the file.")

    @field_validator("dashboard_url", "runbook_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if v and not v.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s) URL (or empty), got {v!r}")
        return v

    def links(self, model: str) -> tuple[str, str]:
        return (self.dashboard_url.replace("{model}", model),
                self.runbook_url.replace("{model}", model))


class Settings(_Strict):
    source: SourceSettings = Field(default_factory=SourceSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    daemon: DaemonSettings = Field(default_factory=DaemonSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    models: tuple[ModelSettings, ...] = Field(min_length=1)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    alerts: AlertSettings = Field(default_factory=AlertSettings)

    @model_validator(mode="after")
    def _labels_need_a_topic(self) -> Settings:
        with_labels = [m.name for m in self.models if m.labels is not None]
        if with_labels and not self.source.kafka.labels_topic:
            raise ValueError(f"models {with_labels} configure labels: set "
                             "source.kafka.labels_topic")
        if self.source.kafka.labels_topic in self.source.kafka.topics:
            raise ValueError("source.kafka.labels_topic must not be one of source.kafka.topics")
        return self

    @field_validator("models")
    @classmethod
    def _unique_models(cls, v: tuple[ModelSettings, ...]) -> tuple[ModelSettings, ...]:
        names = [m.name for m in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate model names: {', '.join(dupes)}")
        return v


def _apply_env(doc: dict[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """Apply the overrides; returns each overridden key path (as errors print it) -> the
    variable that set it, so a validation error there names the variable."""
    applied: dict[str, str] = {}
    for var, raw in sorted(env.items()):
        if not var.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in var[len(ENV_PREFIX):].split("__")]
        if not all(path):
            raise ConfigError(f"environment variable {var}: empty key segment")
        try:
            value = yaml.safe_load(raw) if raw else raw
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"environment variable {var}: not a YAML value ({_yaml_problem(exc)})") from None
        node: Any = doc
        for i, key in enumerate(path):
            last = i == len(path) - 1
            if isinstance(node, list):
                if not key.isdigit() or int(key) >= len(node):
                    where = ".".join(path[:i]) or "<root>"
                    raise ConfigError(
                        f"environment variable {var}: '{key}' is not an index of list "
                        f"'{where}' (length {len(node)})")
                if last:
                    node[int(key)] = value
                else:
                    node = node[int(key)]
            elif isinstance(node, dict):
                if last:
                    node[key] = value
                else:
                    node = node.setdefault(key, {})
            else:
                raise ConfigError(
                    f"environment variable {var}: '{'.'.join(path[:i])}' is not a mapping")
        applied[_loc(tuple(int(p) if p.isdigit() else p for p in path))] = var
    return applied


def _inner_model(tp: Any) -> type[BaseModel] | None:
    """The settings class inside an annotation (Optional, tuple[...], Annotated, unions)."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    for arg in get_args(tp):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _keys_at(loc: tuple[int | str, ...]) -> list[str] | None:
    """The keys the settings class at ``loc`` takes (None: not a settings class)."""
    cls: type[BaseModel] | None = Settings
    for part in loc:
        if isinstance(part, int):
            continue  # an item of a list: the same class
        if cls is None:
            return None
        if part in cls.model_fields:
            cls = _inner_model(cls.model_fields[part].annotation)
        elif part in ("count", "time") and cls is CountWindow:
            cls = CountWindow if part == "count" else TimeWindow  # the discriminator's tag
        else:
            return None
    return sorted(cls.model_fields) if cls is not None else None


def _did_you_mean(loc: tuple[int | str, ...]) -> str:
    """For an unknown key: the closest valid key, or the valid keys."""
    if not loc or not isinstance(loc[-1], str):
        return ""
    keys = _keys_at(loc[:-1])
    if not keys:
        return ""
    close = difflib.get_close_matches(loc[-1], keys, n=1, cutoff=0.6)
    if close:
        return f"; did you mean '{close[0]}'?"
    return f" (valid keys: {', '.join(keys)})"


def _error_line(e: Any, env_keys: Mapping[str, str]) -> str:
    where = _loc(e["loc"])
    msg = e["msg"]
    if e["type"] == "extra_forbidden":
        msg = f"{msg} (unknown key){_did_you_mean(tuple(e['loc']))}"
    var = next((v for k, v in env_keys.items()
                if where == k or where.startswith((k + ".", k + "["))), None)
    if var is not None:
        return f"  {where} (set by environment variable {var}): {msg}"
    return f"  {where}: {msg}"


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong and where, without PyYAML's quote of the line: it may hold a secret."""
    problem = getattr(exc, "problem", None) or "syntax error"
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in {"count", "time"} and out.endswith("window"):
            continue  # pydantic's discriminator tag, not a key the user wrote
        else:
            out += f".{part}" if out else str(part)
    return out or "<root>"


def _under(base: Path, path: Path) -> Path:
    return path if path.is_absolute() else base / path


def _resolve_paths(settings: Settings, base: Path) -> Settings:
    models = []
    for m in settings.models:
        update: dict[str, Any] = {"reference": m.reference.model_copy(
            update={"path": _under(base, m.reference.path)})}
        if m.labels is not None:
            update["labels"] = m.labels.model_copy(update={"reference": m.labels.reference
                                                   .model_copy(update={"path": _under(
                                                       base, m.labels.reference.path)})})
        if m.embedding is not None:
            e = m.embedding
            update["embedding"] = e.model_copy(update={
                "reference": e.reference.model_copy(update={"path": _under(
                    base, e.reference.path)}),
                "model": e.model.model_copy(update={"path": _under(base, e.model.path)})})
        models.append(m.model_copy(update=update))
    return settings.model_copy(update={"models": tuple(models)})


def parse_settings(doc: Any, *, source: str = "<settings>", base_dir: Path | None = None,
                   env: Mapping[str, str] | None = None) -> Settings:
    """Validate a parsed YAML document (plus env overrides) into :class:`Settings`."""
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(doc).__name__}")
    env_keys = _apply_env(doc, os.environ if env is None else env)
    try:
        settings = Settings.model_validate(doc)
    except ValidationError as exc:
        errors = exc.errors()
        # pydantic also reports a list as "too short" when one of its items failed; the
        # item's own error is the useful one.
        failed = {e["loc"][:1] for e in errors if len(e["loc"]) > 1}
        lines = [_error_line(e, env_keys) for e in errors
                 if not (e["type"] == "too_short" and tuple(e["loc"]) in failed)]
        what = ("invalid settings" if not env_keys else
                "invalid settings (file and DRIFTLINE__* environment variables)")
        raise ConfigError(f"{source}: {what}\n" + "\n".join(lines)) from None
    return _resolve_paths(settings, base_dir or Path.cwd())


def load_settings(path: str | Path, env: Mapping[str, str] | None = None) -> Settings:
    """Read, override from the environment, and validate the YAML file at ``path``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read settings file: {exc.strerror}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {_yaml_problem(exc)}") from None
    return parse_settings(doc, source=str(p), base_dir=p.resolve().parent, env=env)
