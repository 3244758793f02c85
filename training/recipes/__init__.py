"""tokencomp.training.recipes."""
