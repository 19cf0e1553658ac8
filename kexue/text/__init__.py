"""The text front half: sources (with quarantine), ingest into partitions, segmentation, counting."""
