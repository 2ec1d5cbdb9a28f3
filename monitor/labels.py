"""Delayed labels: test the stream of joined (label, prediction) pairs.

The join itself is :mod:`monitor.label_join`; the tests are :mod:`monitor.components`
(performance, label drift, streaming detectors).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from monitor.components import BaseComponent, Component, label_components
from monitor.evaluate import ComponentEvaluator
from monitor.settings import LabelSettings


class LabelEvaluator(ComponentEvaluator):
    """Tests a model's windows of joined (label, prediction) pairs against its reference.

    Besides the window tests it feeds every joined record's error (1 wrong / 0 right for
    a classifier, the absolute residual for a regressor) to the configured streaming
    detectors. They start warmed up on the labelled reference (in a fixed shuffled
    order), so they compare production with it from the first window; their state after
    each window travels with the window's report into storage (see :meth:`state`) and
    is loaded back on restart (:meth:`load_state`), so a restart does not forget them.
    """

    stream = "labels"
    stateful = True

    def __init__(self, model: str, settings: LabelSettings, alpha: float,
                 reference: Mapping[str, np.ndarray]) -> None:
        self.model = model
        self.task = settings.task
        self.n_reference = len(reference["label"])
        self._components: list[BaseComponent] = label_components(
            model, settings.task, settings.test, settings.min_samples, settings.streaming,
            alpha, reference)

    @property
    def components(self) -> list[Component]:
        return list(self._components)
