"""Benchmarks (``make bench``): throughput and latency, each as a ratio to a baseline measured in the same run."""
