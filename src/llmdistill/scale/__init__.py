"""Scaling out on a Ray cluster (`--engine ray`): `cluster` connects, `annotate` runs teacher
replicas. Nothing here imports Ray until a Ray engine is asked for."""
