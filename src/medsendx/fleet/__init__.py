"""Fleet analytics: per-scan quality features, a Parquet feature store, fault detection.

``extract_features(ds, triage=None) -> dict`` runs on the truck for every object;
``FeatureStore(root).append(rows)`` writes them as Parquet per station and day (local
folder or ``s3://`` prefix); ``medsendx mine`` (``fleet.report``) mines them at HQ.
"""

from medsendx.fleet.features import FEATURE_KEYS, PHYSICS_METRICS, extract_features
from medsendx.fleet.store import FeatureStore

__all__ = ["FEATURE_KEYS", "PHYSICS_METRICS", "FeatureStore", "extract_features"]
