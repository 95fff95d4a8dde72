"""What was measured, and where it is kept: the Measurement record and the SQLite store."""

from .database import DEFAULT_DB, RunInfo, Store, default_path, measurement_from_dict, measurement_to_dict
from .measurement import STATUSES, Measurement, params_key
from .schema import SCHEMA_VERSION

__all__ = ["DEFAULT_DB", "Measurement", "RunInfo", "SCHEMA_VERSION", "STATUSES", "Store", "default_path",
           "measurement_from_dict", "measurement_to_dict", "params_key"]
