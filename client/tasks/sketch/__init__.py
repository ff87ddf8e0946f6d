"""Sketch-image retrieval (category level, as Sketchy): sketch and photo domains, mAP@all and P@K."""
