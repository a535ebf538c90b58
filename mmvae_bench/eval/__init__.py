"""Evaluation: coherence classifiers, coherence, FID, and the protocol that fixes them."""
