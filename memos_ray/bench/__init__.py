"""Benchmarks: retrieval quality (LoCoMo, LongMemEval), search latency, ingest throughput."""
