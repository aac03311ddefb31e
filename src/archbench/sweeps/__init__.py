"""A sweep's orchestration, above both the comparison and the store: the Hydra callback that keeps
the parent run and attaches the comparison, the launcher that reuses earlier runs, a race's rounds,
and finding the comparison a user points at."""
