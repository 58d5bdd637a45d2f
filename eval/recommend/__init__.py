"""Evaluation of recommendations and shopper-aware search."""
