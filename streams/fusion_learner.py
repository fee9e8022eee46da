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
``fusion-weights`` (key ``global``, compacted; the record is
:class:`streams.contracts.FusionWeights`) on the first update and every
``publish_every`` updates::

    {"bias": -1.2, "weights": {"covis": 0.8, "repeat_count": 0.3}, "updates": 50,
     "filter_seen": false}

Two weight sets. A list that may repeat the user's items and one that may
not (``filter_seen``, the P1 history mask, P2's ``new`` baskets) want
different rankers: repeats carry most of the first and none of the second.
The warm-start file (``STREAMREC_FUSION_WARM_START``, or the sequence model's
``fusion.json``; read by :func:`read_warm_start`) holds the first set and,
optionally, the second under ``"masked"``::

    {"bias": 1.7, "weights": {...}, "masked": {"bias": 0.4, "weights": {...}}}

The dataflow serves one ``filter_seen`` setting, so it learns the one set
that setting uses (:meth:`FusionWeights.weight_set`) and stamps
``filter_seen`` on what it publishes; the worker replaces only that set.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

from pydantic import ValidationError
from river import linear_model, optim

from streams.contracts import FusionWeights, WeightSet

__all__ = ["FusionModel", "FusionStep", "read_warm_start"]

log = logging.getLogger(__name__)


def read_warm_start(path: Path) -> FusionWeights:
    """The warm-start weights in the file ``path``: ``{"bias": b, "weights": {name: w}}``
    with an optional ``"masked"`` set of the same shape, finite numbers only;
    ValueError says what is wrong (a missing file too).

    The file may carry what its fit reports beside the weights (``fitted_on``,
    ``warm_start``: ``model.finetune_seq`` writes them): that is left out. A
    warm start is both sets, so a published record's stamps (``updates``,
    ``filter_seen``) are left out too.
    """
    try:
        obj = json.loads(Path(path).read_text())
        if not isinstance(obj, dict):
            raise ValueError(f"not a JSON object: got {type(obj).__name__}")
        found = _weight_set(obj)
        if "masked" in obj:
            found["masked"] = _weight_set(obj["masked"])
        return FusionWeights.model_validate(found)
    except (OSError, ValueError) as exc:  # a ValidationError is a ValueError
        raise ValueError(
            f"fusion warm start {path}: expected a JSON file "
            f'{{"bias": number, "weights": {{name: number}}, "masked": (optional, same shape)}} '
            f"({exc})"
        ) from exc


def _weight_set(obj: object) -> object:
    """The ``bias`` and ``weights`` of a warm-start set, without what its fit reports."""
    return {k: obj[k] for k in ("bias", "weights") if k in obj} if isinstance(obj, dict) else obj


class FusionModel:
    """Logistic regression over a dict of named features, warm-startable.

    >>> model = FusionModel(WeightSet(bias=0.0, weights={"covis": 1.0}), lr=0.1)
    >>> model.score({"covis": 2.0})
    2.0
    >>> model.learn({"covis": 2.0}, 0)
    >>> model.weights().weights["covis"] < 1.0
    True
    """

    def __init__(self, warm_start: WeightSet | None = None, lr: float = 0.01) -> None:
        self.model = linear_model.LogisticRegression(
            optimizer=optim.SGD(lr),
            l2=0.0,
            intercept_init=warm_start.bias if warm_start is not None else 0.0,
            intercept_lr=lr,
        )
        for name, w in (warm_start.weights if warm_start is not None else {}).items():
            self.model._weights[name] = w
        self.updates = 0

    def learn(self, features: Mapping[str, float], label: int | bool) -> None:
        """One SGD step on (features, label); a missing feature is 0."""
        self.model.learn_one(dict(features), bool(label))
        self.updates += 1

    def score(self, features: Mapping[str, float]) -> float:
        """The linear term w . x + b (the logit)."""
        return float(self.model._raw_dot_one(dict(features)))

    def weights(self) -> WeightSet:
        """The bias and the weights by feature name, as learned so far."""
        return WeightSet(
            bias=float(self.model.intercept),
            weights={k: float(v) for k, v in sorted(dict(self.model.weights).items())},
        )


class FusionStep:
    """The ``fusion`` step: ``(model, (features, label)) -> (model, FusionWeights | None)``.

    A plain callable class, picklable and unit-tested without Bytewax. The
    published record is :meth:`FusionModel.weights` plus ``updates`` and
    ``filter_seen`` (which of the worker's two sets it replaces).
    """

    def __init__(
        self,
        warm_start: FusionWeights | None = None,
        publish_every: int = 50,
        lr: float = 0.01,
        filter_seen: bool = False,
    ) -> None:
        self.warm_start = warm_start.weight_set(filter_seen) if warm_start is not None else None
        self.publish_every = publish_every
        self.lr = lr
        self.filter_seen = filter_seen

    def __call__(
        self, model: FusionModel | None, example: tuple[Mapping[str, float], int]
    ) -> tuple[FusionModel, FusionWeights | None]:
        model = model if model is not None else FusionModel(self.warm_start, self.lr)
        features, label = example
        model.learn(features, label)
        if model.updates == 1 or model.updates % self.publish_every == 0:
            try:
                learned = model.weights()
            except ValidationError:  # a weight that is no longer finite: nothing to publish
                log.warning("fusion learner: weights not finite after %d updates", model.updates)
                return model, None
            return model, FusionWeights(
                bias=learned.bias,
                weights=learned.weights,
                updates=model.updates,
                filter_seen=self.filter_seen,
            )
        return model, None
