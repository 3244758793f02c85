"""tokencomp.eval."""
