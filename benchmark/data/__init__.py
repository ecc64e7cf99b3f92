"""Dataset loaders; each module registers one dataset with ``@register("dataset", name)``."""
