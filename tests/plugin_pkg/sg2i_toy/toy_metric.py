"""``toy_color_gap``: the distance between the mean colours of real and generated images (a plug-in metric)."""

from __future__ import annotations

from benchmark.interfaces import EvalInputs, Metric
from benchmark.registry import register


@register("metric", "toy_color_gap", outputs={"toy_color_gap": False}, mode="mean RGB of real vs generated, L2")
class ToyColorGap(Metric):
    """Toy plug-in metric (mean RGB of real vs generated, L2 distance in [0, 1] units); lower is better."""

    def compute(self, inputs: EvalInputs) -> dict[str, float | None]:
        real = inputs.real.float().mean(dim=(0, 2, 3)) / 255
        fake = inputs.fake.float().mean(dim=(0, 2, 3)) / 255
        return {"toy_color_gap": float((real - fake).norm())}
