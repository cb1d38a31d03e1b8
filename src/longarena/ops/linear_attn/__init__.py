"""(Gated) linear attention, retention and FAVOR+ prefix sums: ``S_t = g_t S_{t-1} + k_t v_t^T``."""
