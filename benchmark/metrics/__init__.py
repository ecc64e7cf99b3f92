"""Evaluation metrics. Each module registers its metrics with their facts as literals::

    @register("metric", "fid", outputs={"fid": False}, mode="clean-fid, clean mode, TF Inception pool3")

``outputs``: each reported value's name -> higher is better; ``mode``: the implementation, recorded with every
value in the results and shown by the leaderboard. A metric that a dataset ranks by is listed in the
``"primary"`` list of the dataset's ``protocol.json``.

* :mod:`benchmark.metrics.inception` -- the FID Inception-v3 (TF ``inception-2015-12-05``, pool3) weight
  resolver and in-memory clean-fid-compatible feature extraction.
* :mod:`benchmark.metrics.fid` -- FID and KID on those features (clean-fid's ``frechet_distance`` and
  ``kernel_distance``), with cached real-image features.
* :mod:`benchmark.metrics.object_acc` -- object accuracy of a small CNN trained on real object crops.
* :mod:`benchmark.metrics.object_acc_resnet` -- Grid2Im's object accuracy (ImageNet ResNet-101 fine-tuned on
  real crops).
* :mod:`benchmark.metrics.inception_score` -- Inception Score, 10 splits (torch-fidelity, TF Inception logits).
* :mod:`benchmark.metrics.lpips_diversity` -- LPIPS (AlexNet) between samples of the same graph.
* :mod:`benchmark.metrics.sg_consistency` -- relation satisfaction and object recall located in the image
  without the method's layout (exact on ``shapes``).
* :mod:`benchmark.metrics.box_recall` -- recall of predicted boxes at IoU 0.3 / 0.5.
* :mod:`benchmark.metrics.clip_score` -- CLIPScore between images and their graph's phrase.
* :mod:`benchmark.metrics.pretrained` -- where the ImageNet weights of these metrics are found (never downloaded).
"""
