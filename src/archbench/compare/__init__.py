"""Comparisons over seeds: the statistics, the report read back from MLflow, and its charts."""
