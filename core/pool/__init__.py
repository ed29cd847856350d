"""Pools of models: catalogs (hand-written or from the Hub) and the user's own models."""
