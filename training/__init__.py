"""tokencomp.training."""
