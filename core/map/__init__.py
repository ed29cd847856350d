"""The map: projections, clusters, neighbours, and the evidence that the clusters mean something."""
