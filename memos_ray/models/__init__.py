"""Model roles (embedder, reranker) and their backends."""
