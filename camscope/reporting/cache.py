"""The per-photo measurement cache ``DIR/metrics/<rel>.json``: reading a record and the keys
that say whether a cached value still holds.

A model-based value is reused only when the map file is the same (SHA-1), the explained class is
the same and the metric's key matches: its name, its effective hyperparameters and, for a seeded
metric, the seed. Records of another ``RECORD_VERSION`` are ignored (measured again).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from camscope.io.rundir import RunDir
from camscope.metrics import MetricSpec

__all__ = ["RECORD_VERSION", "file_sha1", "load_image_metrics", "metric_key", "upgrade_v1"]

logger = logging.getLogger(__name__)

RECORD_VERSION = 2
"""2: values of registered metrics with a cache key per metric (``measured``); 1: fixed groups."""


def load_image_metrics(out_dir: str | Path, rel: str) -> dict | None:
    """The cached record of one photo, or None when absent, unreadable or of another version."""
    path = RunDir(out_dir).metrics_file(rel)
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        logger.warning("%s: unreadable cached metrics, recomputing (%s)", path, exc)
        return None
    if isinstance(rec, dict) and rec.get("version") == 1:
        return upgrade_v1(rec)
    if not isinstance(rec, dict) or rec.get("version") != RECORD_VERSION:
        return None
    return rec


def upgrade_v1(rec: dict) -> dict:
    """A version-1 record (camscope 0.1: fixed faithfulness and ROAD groups) as version 2, so
    that its costly values are reused: each group's key becomes the keys of the registered
    metrics that compute the same values (deletion/insertion, Average Drop, ROAD)."""
    for entry in rec.get("targets") or []:
        for v in (entry.get("variants") or {}).values():
            measured: dict[str, Any] = {}
            fk, rk = v.pop("faithfulness_key", None), v.pop("road_key", None)
            if isinstance(fk, dict) and fk.get("adi") == "pixel-space":
                measured["deletion_insertion"] = {"params": _jsonable(
                    {"steps": fk.get("steps"), "score": fk.get("score"), "delete": fk.get("delete"), "insert": fk.get("insert")})}
                measured["average_drop"] = {"params": {"score": fk.get("score")}}
                if "gap" not in v and isinstance(v.get("insertion_auc"), (int, float)) and isinstance(v.get("deletion_auc"), (int, float)):
                    v["gap"] = v["insertion_auc"] - v["deletion_auc"]
            if isinstance(rk, dict):
                measured["road"] = {"params": _jsonable({"fractions": rk.get("fractions"), "noise": rk.get("noise"),
                                                         "score": rk.get("score")}), "seed": rk.get("seed")}
            if measured:
                v["measured"] = measured
    rec["version"] = RECORD_VERSION
    return rec


def file_sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in sorted(x.items())}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return repr(x)


def metric_key(spec: MetricSpec, params: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """What a cached value of ``spec`` was measured with (compared as JSON)."""
    key: dict[str, Any] = {"params": _jsonable(params)}
    if spec.seeded:
        key["seed"] = seed
    return json.loads(json.dumps(key))
