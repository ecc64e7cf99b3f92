"""Turn dataset vocabulary names into natural phrases for text encoders.

Rules of :func:`natural_phrase`, applied in order:

1. Special tokens lose their underscores: ``"__image__"`` -> ``"image"``, ``"__in_image__"`` -> ``"in image"``.
2. Underscores become spaces: ``"head_surgeon"`` -> ``"head surgeon"``.
3. CamelCase is split and lower-cased: ``"LyingOn"`` -> ``"lying on"`` (acronyms stay together:
   ``"OR table"`` stays, ``"USBPort"`` -> ``"USB port"``). Names already in lower case are not re-cased.
4. COCO-Stuff ``"<thing>-<suffix>"`` names (exactly one hyphen, no spaces): a material suffix becomes a
   modifier (``"wall-concrete"`` -> ``"concrete wall"``, ``"floor-wood"`` -> ``"wood floor"``); the generic
   suffixes ``other``/``stuff``/``merged`` are dropped (``"wall-other"`` -> ``"wall"``,
   ``"mirror-stuff"`` -> ``"mirror"``); any other hyphenated word is kept (``"t-shirt"``, ``"window-blind"``).
5. Whitespace is collapsed; anything else is unchanged (``"left of"``, ``"red circle"``).

A dataset may override all of this in its ``phrases()`` method (``SceneGraphDataset.phrases``), e.g. to
map ``"tv"`` to ``"television"``; the vocabulary names themselves are never changed.
"""

from __future__ import annotations

import re

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_GENERIC_SUFFIXES = frozenset({"other", "stuff", "merged"})
_MATERIALS = frozenset(
    {
        "brick",
        "concrete",
        "marble",
        "panel",
        "stone",
        "tile",
        "wood",
        "metal",
        "glass",
        "plastic",
        "paper",
        "cloth",
    }
)


def natural_phrase(name: str) -> str:
    """The natural phrase for a vocabulary name (rules in the module docstring)."""
    s = name.strip()
    if s.startswith("__") and s.endswith("__") and len(s) > 4:
        s = s[2:-2]
    s = s.replace("_", " ")
    if s != s.lower() and s != s.upper():
        s = " ".join(_CAMEL.sub(" ", w) if not w.isupper() else w for w in s.split())
        s = " ".join(
            w if (w.isupper() and len(w) > 1 and w.isalpha() and w in name) else w.lower() for w in s.split()
        )
    if s.count("-") == 1 and " " not in s:
        head, mod = s.split("-")
        if head and mod in _GENERIC_SUFFIXES:
            s = head
        elif head and mod in _MATERIALS:
            s = f"{mod} {head}"
    return " ".join(s.split())
