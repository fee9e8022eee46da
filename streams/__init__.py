"""streamrec's streaming side: everything that runs inside Bytewax.

Event contracts and settings (`contracts`, `settings`) are imported by both
processes; the rest (user state, retrieval, the dataflow) never imports torch.
"""
