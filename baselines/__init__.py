"""Baselines: reference points every method is compared against (retrieval, SG2Im and its variants)."""
