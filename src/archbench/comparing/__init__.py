"""Comparisons over seeds from plain tables: the statistics and verdicts, the comparison per
configuration, its table and its charts. No store here: tracking/ reads the runs into tables, and
the simulations in tests/ call these very functions."""
