"""Offline evaluation of recommendations: protocols R1, R1-new, R2 (and R3) of the
datasets README for every strategy side by side (``shopsearch eval recommend``)."""
