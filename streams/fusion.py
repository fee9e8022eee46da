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

    {"bias": -1.2, "weights": {"covis": 0.8, "repeat_count": 0.3}, "updates": 50,
     "filter_seen": false}

Two weight sets. A list that may repeat the user's items and one that may
not (``filter_seen``, the P1 history mask, P2's ``new`` baskets) want
different rankers: repeats carry most of the first and none of the second.
The warm-start file (``STREAMREC_FUSION_WARM_START``, or the sequence model's
``fusion.json``) holds the first set and, optionally, the second under
``"masked"``::

    {"bias": 1.7, "weights": {...}, "masked": {"bias": 0.4, "weights": {...}}}

The dataflow serves one ``filter_seen`` setting, so it learns the one set
that setting uses (:func:`weight_set`) and stamps ``filter_seen`` on what it
publishes; the worker replaces only that set.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

from river import linear_model, optim

__all__ = ["FusionModel", "FusionStep", "load_weights", "parse_published", "weight_set"]


def load_weights(path: Path) -> dict:
    """A ``{"bias": b, "weights": {name: w}}`` file, with its optional ``"masked"``
    set of the same shape; ValueError says what is wrong."""
    try:
        weights = parse_published(Path(path).read_text())
        # A warm start is both sets: a published record's stamps do not apply.
        weights.pop("filter_seen", None)
        weights.pop("updates", None)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(
            f"fusion warm start {path}: expected a JSON file "
            f'{{"bias": number, "weights": {{name: number}}, "masked": (optional, same shape)}} '
            f"({exc})"
        ) from exc
    return weights


def weight_set(weights: Mapping, filter_seen: bool) -> dict:
    """The ``{"bias", "weights"}`` set for lists with (True) or without the seen
    filter; without a ``"masked"`` set both use the main one.

    >>> weight_set({"bias": 1.0, "weights": {}, "masked": {"bias": 0.0, "weights": {}}}, True)
    {'bias': 0.0, 'weights': {}}
    """
    chosen = weights.get("masked", weights) if filter_seen else weights
    return _set(chosen)


def parse_published(raw: bytes | str | None) -> dict:
    """A ``fusion-weights`` record -> its weights; ValueError (or KeyError,
    TypeError, AttributeError) for anything but finite numbers of that shape.

    The worker scores every candidate with these: a NaN or a string that slipped
    through would break or silently poison every list.
    """
    obj = json.loads(raw)  # type: ignore[arg-type] - None raises TypeError
    weights = _set(obj)
    if "masked" in obj:
        weights["masked"] = _set(obj["masked"])
    if "filter_seen" in obj:
        if not isinstance(obj["filter_seen"], bool):
            raise ValueError("filter_seen must be true or false")
        weights["filter_seen"] = obj["filter_seen"]
    if "updates" in obj:
        weights["updates"] = int(obj["updates"])
    return weights


def _set(obj: Mapping) -> dict:
    return {"bias": _finite(obj["bias"]), "weights": _floats(obj["weights"])}


def _floats(weights: Mapping) -> dict[str, float]:
    return {str(k): _finite(v) for k, v in weights.items()}


def _finite(value: object) -> float:
    """A finite float; a bool or a string is refused rather than coerced."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"a weight must be a number, not {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"a weight must be finite, not {number}")
    return number


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
    published dict is :meth:`FusionModel.weights` plus ``updates`` and
    ``filter_seen`` (which of the worker's two sets it replaces).
    """

    def __init__(
        self,
        warm_start: Mapping | None = None,
        publish_every: int = 50,
        lr: float = 0.01,
        filter_seen: bool = False,
    ) -> None:
        self.warm_start = weight_set(warm_start, filter_seen) if warm_start else None
        self.publish_every = publish_every
        self.lr = lr
        self.filter_seen = filter_seen

    def __call__(
        self, model: FusionModel | None, example: tuple[Mapping[str, float], int]
    ) -> tuple[FusionModel, dict | None]:
        model = model if model is not None else FusionModel(self.warm_start, self.lr)
        features, label = example
        model.learn(features, label)
        if model.updates == 1 or model.updates % self.publish_every == 0:
            published = {**model.weights(), "updates": model.updates}
            return model, {**published, "filter_seen": self.filter_seen}
        return model, None
