"""tokencomp.serving."""
