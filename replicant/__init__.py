"""Replicant: a self-hosted, Replicate-compatible platform for Cog models on Temporal."""

__version__ = "0.1.0"
