"""Serving a model over time: which version is live, and how a new one replaces it."""
