"""Vector store: dense and keyword recall."""
