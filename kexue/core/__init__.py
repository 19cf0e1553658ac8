"""What every stage shares: content-addressed artifacts, the config and its DAG, the stage registry, seeding."""
