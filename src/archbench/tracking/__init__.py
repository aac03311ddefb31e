"""Everything that talks to MLflow: runs (one per job), the store, what a run records, the logged
model, and the sweep's parent run (a Hydra callback)."""
