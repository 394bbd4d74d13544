"""Developer commands that build on the whole project: the benchmark and the scan-order figure."""
