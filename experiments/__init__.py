"""A/B experiments, read back from the topics: statistics and the report.

Assignment happens in the dataflow (``streams.experiments``); this package
never runs there. ``stats`` computes each experiment's per-variant outcomes,
intervals and tests; ``report`` reads the public topics and renders them
(``streamrec experiment report``, Markdown or JSON).

May import: ``streams``; no torch.
"""
