"""The two-tier cache: L1 in process memory, L2 in Redis, with single-flight in front."""
