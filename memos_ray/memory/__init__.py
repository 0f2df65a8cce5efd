"""Memory algorithms: pure functions over domain models (no Ray, web or database SDKs)."""
