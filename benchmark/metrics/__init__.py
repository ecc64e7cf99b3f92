"""Evaluation metrics. Each module registers its metrics with ``@register("metric", name)``.

* :mod:`benchmark.metrics.inception` -- the FID Inception-v3 (TF ``inception-2015-12-05``, pool3) weight
  resolver and in-memory clean-fid-compatible feature extraction.
* :mod:`benchmark.metrics.fid` -- FID and KID on those features (clean-fid's ``frechet_distance`` and
  ``kernel_distance``), with cached real-image features.
* :mod:`benchmark.metrics.object_acc` -- object accuracy of a small CNN trained on real object crops.
"""
