"""The offline quality harness: protocols, metrics, baselines and the runner.

``protocols`` turns a loaded dataset into the P1 (leave-last-out) split or the
P2 (prequential replay) driver, ``quality`` scores ranked lists, ``baselines``
holds the reference methods behind the :class:`Recommender` base class, and
``runner`` puts them together (EVALUATION.md is the spec).
"""

from model.evaluation.baselines import (
    Content,
    ItemKNN,
    Popularity,
    Recommender,
    RepeatBuy,
    default_methods,
    top_k,
)
from model.evaluation.protocols import (
    Events,
    LeaveLastOut,
    PrequentialReplay,
    ProtocolError,
    TrainSet,
    leave_last_out,
)
from model.evaluation.quality import QualityAccumulator, ReferenceEmbeddings
from model.evaluation.runner import evaluate_p1, evaluate_p2

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
