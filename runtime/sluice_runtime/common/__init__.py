"""What the receiver and the publisher share: config loading, the wire envelope, HTTP plumbing, metrics."""
