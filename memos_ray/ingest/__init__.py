"""Bulk ingest, pure logic: input formats to validated units, units to prepared memories.

The Ray Data shell that runs it at scale is `jobs.ingest`.
"""
