"""Evaluation runners and metrics: needle-in-a-haystack grids, lost-in-the-middle,
perplexity vs length, LAMBADA, LongBench, induction-head scores, speed/memory benchmarks.
One small model adapter lets every runner evaluate LongArena LMs and Hugging Face LMs.
"""
