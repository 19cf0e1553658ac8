"""Word graphs and their communities: co-occurrence/PPMI and kNN graphs, graph files, InfoMap, the map equation."""
