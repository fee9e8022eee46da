"""The datasets and how they are split: what training and evaluation both read.

``datasets`` loads a dataset folder of ``../shared/data`` (or the shipped
sample) into items and time-ordered interactions; ``protocols`` turns it into
the P1 (leave-last-out) split or the P2 (prequential replay) driver of
EVALUATION.md and holds the :class:`~corpus.protocols.Recommender` base class
the protocols run. Training reads its validation split from here, so this sits
below both ``model`` and ``evaluation``.

May import: ``streams`` (contracts, settings) only; no torch.
"""
