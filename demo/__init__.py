"""tokencomp.demo."""
