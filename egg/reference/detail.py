"""Where an object's detail (the letter, shape or digit to read) lies inside its box: the
generator records it in `Item.meta["details"]` as it draws it, at a geometry with a detail size."""
from __future__ import annotations


def detail_box(item, box):
    """Where `item`'s generator drew the detail of the object whose box is `box`: the sign's
    white panel, the ring's white disc, the field's value, the bar's label; None for other
    families, for a geometry with no detail size and for a box that is no object's. Why: binding
    models look at the named colour, and in a crop the letter is beside it (CHANGELOG, stop 45)."""
    box = tuple(box)
    return next((d for o, d in item.meta.get("details", ()) if o == box), None)
