"""streamrec's streaming side: the dataflow's own steps, and the contracts below them.

Layer 1 (the bottom): ``contracts`` (every record on every topic) and
``settings`` (every knob) import nothing else of streamrec, and everything
else imports them. Layer 2: what runs inside the Bytewax dataflow (``dataflow``
and its steps: ``state``, ``signals``, ``retrieval``, ``fusion_learner``,
``attribution``, ``experiments`` (assignment), ``exposure``, ``bandit/``) and the
Kafka plumbing both processes share (``kafka``, ``source``, ``sink``,
``catalog``, ``metrics``). ``sample_data`` is the shipped default dataset.

May import: nothing of streamrec outside ``streams``; never torch or
transformers (``tests/unit/test_layers.py`` checks both).
"""
