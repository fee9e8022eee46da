"""The offline quality harness: metrics, baselines, peers, runner, sweep, checks.

``quality`` scores ranked lists, ``baselines`` and ``peers`` are the reference
methods, ``runner`` runs a method through a protocol of
:mod:`corpus.protocols` (EVALUATION.md is the spec), ``sweep`` the diversity
arms, ``consistency`` the through-Kafka check (the real pipeline against
:class:`model.system.StreamrecSystem` in-process) and ``simulator`` the
closed-loop world that tests the bandit and attribution.

May import: ``streams``, ``corpus``, ``model``, ``experiments``, ``pipeline``;
never ``streamrec`` (the CLI).
"""

from corpus.protocols import (
    Events,
    LeaveLastOut,
    PrequentialReplay,
    ProtocolError,
    TrainSet,
    leave_last_out,
)
from evaluation.baselines import (
    Content,
    ItemKNN,
    Popularity,
    Recommender,
    RepeatBuy,
    default_methods,
    top_k,
)
from evaluation.quality import QualityAccumulator, ReferenceEmbeddings
from evaluation.runner import evaluate_p1, evaluate_p2

__all__ = [
    "Content",
    "Events",
    "ItemKNN",
    "LeaveLastOut",
    "Popularity",
    "PrequentialReplay",
    "ProtocolError",
    "QualityAccumulator",
    "Recommender",
    "ReferenceEmbeddings",
    "RepeatBuy",
    "TrainSet",
    "default_methods",
    "evaluate_p1",
    "evaluate_p2",
    "leave_last_out",
    "top_k",
]
