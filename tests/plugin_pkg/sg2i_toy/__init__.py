"""A toy sg2i-bench plug-in: every public module of this package is scanned for ``@register`` decorators."""
