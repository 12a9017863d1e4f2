"""The run folder's format (``camscope.io.rundir``): names, typed records, versions, tables.

``data/manifest_v1.json`` is a manifest written by camscope before the run folder had an owner
module (commit 680f5e1, a tiny CNN, top-2 classes, Grad-CAM and Eigen-CAM with eigen smoothing,
one undecodable input): it must still load, and write back byte for byte.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from camscope.errors import UsageError
from camscope.io.rundir import (
    FAILURES,
    FORMAT_VERSION,
    MANIFEST,
    PREDICTION_COLUMNS,
    PREDICTIONS,
    ClassScore,
    Failure,
    ImageRecord,
    Manifest,
    RunDir,
    RunSettings,
    output_stems,
    parse_variant,
    smoothing_label,
    target_stem,
    variant_name,
)

V1 = Path(__file__).parent / "data" / "manifest_v1.json"


def _v1() -> dict:
    return json.loads(V1.read_text(encoding="utf-8"))


def test_variant_names_round_trip() -> None:
    assert variant_name("gradcam") == "gradcam"
    assert variant_name("gradcam", ("eigen", "aug")) == "gradcam+eigen+aug"
    assert parse_variant("gradcam+eigen+aug") == ("gradcam", ("eigen", "aug"))
    assert parse_variant("scorecam-logit-softmax") == ("scorecam-logit-softmax", ())
    assert smoothing_label(("eigen", "aug")) == "eigen+aug" and smoothing_label(()) == ""
    for name in ("ablationcam", "layercam+aug", "eigencam+eigen"):
        assert variant_name(*parse_variant(name)) == name


def test_stems() -> None:
    stems = output_stems(["a.jpg", "A.png", "sub/b.jpg", "c", ".hidden"])
    assert stems == {"a.jpg": "a.jpg", "A.png": "A.png", "sub/b.jpg": "sub/b", "c": "c", ".hidden": ".hidden"}
    assert target_stem("sub/b", 0, 1) == "sub/b"
    assert [target_stem("b", r, 3) for r in range(3)] == ["b.top1", "b.top2", "b.top3"]


def test_old_manifest_loads_typed_and_writes_back_identically() -> None:
    data = _v1()
    m = Manifest.from_json(data)
    assert m.version == 1 and m.settings.model == "tiny" and m.settings.random_weights
    assert m.settings.methods == ("gradcam", "eigencam") and m.settings.variants == [(), ("eigen",)]
    assert m.outputs == ["gradcam", "eigencam", "gradcam+eigen", "eigencam+eigen"]
    rec = m.images["a.png"]
    assert rec.complete and rec.size == (24, 20) and rec.correct is None
    assert rec.targets == [ClassScore(4, "class 4", 0.273097), ClassScore(3, "class 3", 0.243037)]
    assert rec.file("gradcam+eigen", 1, ".npy") == "gradcam+eigen/a.top2.npy"
    assert rec.file("gradcam", 0, ".png") == "gradcam/a.top1.png"
    assert rec.file("gradcam", 2, ".png") is None and rec.file("nosuch", 0, ".png") is None
    assert len(rec.paths()) == 4 * 4 + 2
    assert m.failures == {"bad.png": Failure("/photos/bad.png", "cannot identify image file: not an image or unsupported format")}
    assert m.label("gradcam+eigen") == "Grad-CAM +eigen" and m.label("nosuch") == "nosuch"
    assert json.dumps(m.to_json(), indent=2, ensure_ascii=False) == json.dumps(data, indent=2, ensure_ascii=False)


def test_manifest_without_version_is_version_1() -> None:
    data = _v1()
    del data["manifest_version"]
    assert Manifest.from_json(data).version == 1


@pytest.mark.parametrize(
    "change,expected",
    [
        (lambda d: d.update(manifest_version=FORMAT_VERSION + 1), "newer than this camscope reads"),
        (lambda d: d.update(manifest_version="2"), "newer than this camscope reads"),
        (lambda d: d.pop("settings"), "not a camscope manifest"),
        (lambda d: d.update(images=[]), "not a camscope manifest"),
        (lambda d: d["images"]["a.png"].update(size=[1]), "malformed manifest"),
        (lambda d: d["images"]["a.png"]["top5"][0].pop("class"), "malformed manifest"),
    ],
)
def test_bad_manifests_are_one_line_errors(tmp_path: Path, change, expected) -> None:
    data = _v1()
    change(data)
    (tmp_path / MANIFEST).write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(UsageError) as info:
        RunDir(tmp_path).read_manifest(hint="use --force")
    msg = str(info.value)
    assert expected in msg and str(tmp_path / MANIFEST) in msg and msg.endswith("; use --force") and "\n" not in msg


def test_unreadable_and_missing_manifest(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    assert run.read_manifest() is None
    with pytest.raises(UsageError, match="no manifest.json; is this the --out folder"):
        run.load()
    run.manifest_path.write_text("{not json", encoding="utf-8")
    with pytest.raises(UsageError, match=r"unreadable manifest .*; use --force or another --out$"):
        run.read_manifest(hint="use --force or another --out")


def test_settings_differences_name_what_changed() -> None:
    a = RunSettings.from_json(_v1()["settings"])
    b = RunSettings(**{**a.__dict__, "layer": "features.3", "top_k": 1})
    assert a.differences(a) == [] and a.differences(b) == ["layer", "top_k"]
    assert RunSettings.from_json(a.to_json()) == a


def _record(stem: str, correct: bool | None) -> ImageRecord:
    return ImageRecord(
        source=f"/in/{stem}.jpg",
        size=(40, 30),
        top5=[ClassScore(2, "b", 0.5), ClassScore(1, "a,\"x\"", 0.25)],
        targets=[ClassScore(2, "b", 0.5)],
        true_class=None if correct is None else 1,
        true_name=None if correct is None else "a,\"x\"",
        correct=correct,
        files={"gradcam": [f"gradcam/{stem}.png", f"gradcam/{stem}.npy"]},
        figures=[f"figures/{stem}.png"],
    )


def test_write_manifest_and_tables(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.check_writable()
    assert not (tmp_path / "run").exists()  # checking creates nothing
    run.create()
    settings = RunSettings.from_json(_v1()["settings"])
    m = Manifest(settings, images={"z.jpg": _record("z", False), "a.jpg": _record("a", None)})
    run.write_manifest(m)
    assert not (run.root / FAILURES).exists()  # no failure, none before: no file
    rows = list(csv.reader((run.root / PREDICTIONS).open(encoding="utf-8", newline="")))
    assert rows[0] == list(PREDICTION_COLUMNS)
    assert [r[0] for r in rows[1:]] == ["a.jpg", "z.jpg"]  # sorted
    z = dict(zip(rows[0], rows[2], strict=True))
    assert z["top2_name"] == 'a,"x"' and z["top3_class"] == "" and z["correct"] == "no" and z["true_class"] == "1"
    assert dict(zip(rows[0], rows[1], strict=True))["correct"] == ""
    m.failures["bad.jpg"] = Failure("/in/bad.jpg", "truncated")
    run.write_manifest(m)
    assert (run.root / FAILURES).read_text(encoding="utf-8").splitlines() == ["file,source,reason", "bad.jpg,/in/bad.jpg,truncated"]
    del m.failures["bad.jpg"]
    run.write_manifest(m)  # a failures.csv once written is kept up to date, never left stale
    assert (run.root / FAILURES).read_text(encoding="utf-8").splitlines() == ["file,source,reason"]
    assert run.load().to_json() == m.to_json()


def test_maps_and_completion(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    rec = _record("a", None)
    assert not run.is_complete(rec) and not run.is_complete(None)
    run.write_map("gradcam/a.npy", np.arange(6, dtype=np.float64).reshape(2, 3))
    got = run.read_map("gradcam/a.npy")
    assert got.dtype == np.float32 and got.tolist() == [[0, 1, 2], [3, 4, 5]]
    run.write_png("gradcam/a.png", b"png")
    assert not run.is_complete(rec)  # the figure is still missing
    run.write_png("figures/a.png", b"png")
    assert run.is_complete(rec)
    assert not run.is_complete(ImageRecord(**{**rec.__dict__, "status": "partial"}))
    assert run.metrics_file("sub/a.jpg") == tmp_path / "metrics" / "sub/a.jpg.json"


def test_output_folder_checks(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="output path exists and is not a directory"):
        RunDir(tmp_path / "file").check_writable()
    with pytest.raises(UsageError, match="is not a directory"):
        RunDir(tmp_path / "file" / "sub").check_writable()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".manifest.json.0123abcd.tmp").write_text("left by a killed run")
    RunDir(tmp_path / "out").create()
    assert list((tmp_path / "out").iterdir()) == []  # temp files removed, probe removed


def test_cluster_and_output_kinds_are_optional_sections() -> None:
    m = Manifest.from_json(_v1())
    assert m.cluster is None and m.output_kinds is None
    assert "cluster" not in m.to_json() and "output_kinds" not in m.to_json()  # old files unchanged
    m.cluster = {"ray": "2.60.0", "address": "auto", "workers": 4, "cpus_per_worker": 2, "gpus_per_worker": 0.5}
    m.output_kinds = ("maps", "figures")
    d = json.loads(json.dumps(m.to_json()))
    assert d["cluster"] == m.cluster and d["output_kinds"] == ["maps", "figures"]
    assert list(d)[-1] == "cluster"
    back = Manifest.from_json(d)
    assert back.cluster == m.cluster and back.output_kinds == ("maps", "figures")
    assert back.to_json() == d


def test_completion_needs_the_asked_output_kinds(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    rec = _record("a", None)
    assert rec.kinds() == {"maps", "overlays", "figures"}
    for rel in rec.paths():
        run.write_bytes(rel, b"x")
    assert run.is_complete(rec, ("maps", "overlays", "figures")) and run.is_complete(rec)
    maps_only = ImageRecord(**{**rec.__dict__, "files": {"gradcam": ["gradcam/a.npy"]}, "figures": []})
    assert maps_only.kinds() == {"maps"}
    assert run.is_complete(maps_only, ("maps",))
    assert not run.is_complete(maps_only, ("maps", "figures"))  # asked for more: not complete
    figures_only = ImageRecord(**{**rec.__dict__, "files": {"gradcam": []}})
    assert figures_only.kinds() == {"figures"} and not run.is_complete(figures_only, ("overlays",))
