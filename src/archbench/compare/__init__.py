"""Comparisons over seeds: the statistics, the report read back from MLflow, and its charts.

`archbench.compare(...)` is also the Python API's call (api.compare): this package is that
attribute of `archbench` once imported, so the package itself answers the call.
"""

import sys
import types


class _Callable(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from archbench import api

        return api.compare(*args, **kwargs)

    __call__.__doc__ = "archbench.compare(parent=None, experiment=None): see archbench.api.compare"


sys.modules[__name__].__class__ = _Callable
