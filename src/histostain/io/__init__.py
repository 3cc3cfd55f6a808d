"""Input/output at the boundary: images, tiling, annotation formats, atomic writes."""
