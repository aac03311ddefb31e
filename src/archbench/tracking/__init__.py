"""Everything that talks to MLflow: runs (one per job), the store, what a run records, the logged
model, and the store's runs read back into plain tables (tables.py)."""
