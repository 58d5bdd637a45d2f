"""Recommendation candidates learned from shoppers' events: item-to-item (bought together,
similar), for-you, and the shopper signals shopper-aware search re-scores with.

The contract every model implements is :class:`retrieval.recommend.base.Recommender`.
"""
