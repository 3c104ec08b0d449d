"""The receiver: rxtx-compatible HTTP intake onto a durable LevelDB queue, forwarded in batches to a publisher."""
