"""Diagonal and selective linear recurrences ``h_t = a_t * h_{t-1} + b_t`` (S5, Mamba, LRU)."""
