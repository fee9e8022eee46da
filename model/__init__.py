"""streamrec's model side: everything that needs torch or transformers.

The encoder and its fine-tuning, the catalog index, the sequence model and
the fusion ranker, the cross-encoder, scoring, diversity reranking, reasons,
the ranker a worker serves (``ranker.build_ranker``), the product run offline
(``system``), and the inference worker (``worker``: the Kafka loop around a
ranker).

May import: ``streams`` and ``corpus``; never ``evaluation``, ``experiments``,
``pipeline`` or ``streamrec`` (``tests/unit/test_layers.py``).
"""
