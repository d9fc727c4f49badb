"""Talking to nodes: the Transport contract (base), SSH (ssh), node facts (facts)."""
