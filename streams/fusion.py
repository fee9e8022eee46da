"""Online learning of the fusion ranker's weights (the dataflow's ``fusion`` step).

The worker's fusion ranker scores a candidate with a linear model over named
features (retrieval scores, repeat counts, co-visitation, trend, ...) and
stamps each shown item's features on the list (``RankedItem.features``).
When a shown list closes (:mod:`streams.attribution`), every item that
carried features becomes one example: label 1 when the list earned an
attributed interaction on it (attribution credits clicks, carts, favourites
and purchases, never views), else 0. :class:`FusionModel` learns from them
by logistic regression (river, plain SGD, no scaler: features arrive
pre-scaled) and :class:`FusionStep` publishes its weights to
``fusion-weights`` (key ``global``, compacted, JSON) on the first update and
every ``publish_every`` updates::

    {"bias": -1.2, "weights": {"covis": 0.8, "repeat_count": 0.3}, "updates": 50}

``{"bias", "weights"}`` is also the warm-start file's shape
(``STREAMREC_FUSION_WARM_START``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from river import linear_model, optim

__all__ = ["FusionModel", "FusionStep", "load_weights"]


def load_weights(path: Path) -> dict:
    """A ``{"bias": b, "weights": {name: w}}`` file; ValueError says what is wrong."""
    try:
        obj = json.loads(Path(path).read_text())
        weights = {"bias": float(obj["bias"]), "weights": _floats(obj["weights"])}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(
            f"fusion warm start {path}: expected a JSON file "
            f'{{"bias": number, "weights": {{name: number}}}} ({exc})'
        ) from exc
    return weights


def _floats(weights: Mapping) -> dict[str, float]:
    return {str(k): float(v) for k, v in weights.items()}


class FusionModel:
    """Logistic regression over a dict of named features, warm-startable.

    >>> model = FusionModel({"bias": 0.0, "weights": {"covis": 1.0}}, lr=0.1)
    >>> model.score({"covis": 2.0})
    2.0
    >>> model.learn({"covis": 2.0}, 0)
    >>> model.weights()["weights"]["covis"] < 1.0
    True
    """

    def __init__(self, warm_start: Mapping | None = None, lr: float = 0.01) -> None:
        start = warm_start or {}
        self.model = linear_model.LogisticRegression(
            optimizer=optim.SGD(lr),
            l2=0.0,
            intercept_init=float(start.get("bias", 0.0)),
            intercept_lr=lr,
        )
        for name, w in _floats(start.get("weights", {})).items():
            self.model._weights[name] = w
        self.updates = 0

    def learn(self, features: Mapping[str, float], label: int | bool) -> None:
        """One SGD step on (features, label); a missing feature is 0."""
        self.model.learn_one(dict(features), bool(label))
        self.updates += 1

    def score(self, features: Mapping[str, float]) -> float:
        """The linear term w . x + b (the logit)."""
        return float(self.model._raw_dot_one(dict(features)))

    def weights(self) -> dict:
        """``{"bias": b, "weights": {name: w}}``: the warm-start and ``fusion-weights`` shape."""
        return {
            "bias": float(self.model.intercept),
            "weights": {k: float(v) for k, v in sorted(dict(self.model.weights).items())},
        }


class FusionStep:
    """The ``fusion`` step: ``(model, (features, label)) -> (model, weights | None)``.

    A plain callable class, picklable and unit-tested without Bytewax. The
    published dict is :meth:`FusionModel.weights` plus ``updates``.
    """

    def __init__(
        self, warm_start: Mapping | None = None, publish_every: int = 50, lr: float = 0.01
    ) -> None:
        self.warm_start = dict(warm_start) if warm_start else None
        self.publish_every = publish_every
        self.lr = lr

    def __call__(
        self, model: FusionModel | None, example: tuple[Mapping[str, float], int]
    ) -> tuple[FusionModel, dict | None]:
        model = model if model is not None else FusionModel(self.warm_start, self.lr)
        features, label = example
        model.learn(features, label)
        if model.updates == 1 or model.updates % self.publish_every == 0:
            return model, {**model.weights(), "updates": model.updates}
        return model, None
