"""Long causal (and bidirectional) convolutions via FFT (S4, H3, Hyena, Mega's EMA)."""
