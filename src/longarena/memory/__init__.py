"""Segment-level recurrence: models that read a long input segment by segment and carry a
memory across segments (Transformer-XL cache, Compressive memory, Recurrent Memory
Transformer, Memformer), and the segment runner that feeds any model this way with
truncated back-propagation through segments.
"""
