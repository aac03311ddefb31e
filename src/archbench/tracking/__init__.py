"""Everything that talks to MLflow: runs (one per job), the store, what a run records, the logged
model, and the store's runs read back into plain tables (tables.py)."""

DEFAULT_URI = "sqlite:///mlruns/mlflow.db"  # conf/config.yaml's tracking.uri, for the report and the API
