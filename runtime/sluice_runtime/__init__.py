"""Sluice runtime: the receiver (durable intake) and the publisher (bulk indexing)."""
