"""streamrec's model side: everything that needs torch/transformers.

Loading the encoder, embedding items into a catalog index, scoring candidates,
diversity reranking and the inference worker. Depends on `streams.contracts`,
never the other way round.
"""
