"""Small neural-network building blocks shared by methods and baselines (e.g. :class:`NodeEmbedding`)."""
