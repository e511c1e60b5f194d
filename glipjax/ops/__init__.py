"""Box geometry, anchors, ATSS assignment, losses and post-processing (pure functions, jittable)."""
