"""Report logic without a model: written findings, summary/ranking, boxes in the input frame."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from camscope.metrics import Box, boxes_to_mask
from camscope.models import Preprocess
from camscope.reporting.evaluate import boxes_to_input_frame, map_properties
from camscope.reporting.findings import best_variant, image_findings, run_findings
from camscope.reporting.summary import metric_rows, summarize


def _v(method: str, smoothing: str = "", **kw: object) -> dict:
    title = {"gradcam": "Grad-CAM", "ablationcam": "Ablation-CAM", "scorecam": "Score-CAM"}[method]
    label = f"{title} +{smoothing}" if smoothing else title
    return {"method": method, "smoothing": smoothing, "label": label, "degenerate": None, **kw}


def _pair(a: str, b: str, rho: float, iou: float) -> dict:
    return {"a": a, "b": b, "spearman": rho, "top_iou": iou}


def _record(entry: dict, **kw: object) -> dict:
    rec = {"rel": "x.jpg", "top5": [{"class": 1, "name": "tabby", "prob": 0.6}], "true_class": None,
           "correct": None, "targets": [entry]}
    rec.update(kw)
    return rec


def test_agreement_and_outlier() -> None:
    entry = {
        "rank": 0, "class": 1, "name": "tabby",
        "variants": {
            "gradcam": _v("gradcam", region="centre"),
            "ablationcam": _v("ablationcam", region="centre"),
            "scorecam": _v("scorecam", region="top-left"),
        },
        "agreement": [
            _pair("gradcam", "ablationcam", 0.97, 0.81),
            _pair("gradcam", "scorecam", 0.10, 0.05),
            _pair("ablationcam", "scorecam", 0.12, 0.08),
        ],
    }
    f = image_findings(_record(entry))
    assert (
        "Grad-CAM and Ablation-CAM agree closely (Spearman 0.97, top-15% IoU 0.81); both peak in the centre." in f
    )
    assert "Score-CAM disagrees with all other methods (max Spearman 0.12, max top-15% IoU 0.08)." in f


def test_all_agree_and_two_disagree() -> None:
    names = ("gradcam", "ablationcam", "scorecam")
    entry = {
        "variants": {n: _v(n, region="right") for n in names},
        "agreement": [_pair("gradcam", "ablationcam", 0.9, 0.7), _pair("gradcam", "scorecam", 0.85, 0.6),
                      _pair("ablationcam", "scorecam", 0.95, 0.8)],
    }
    f = image_findings(_record(entry))
    assert f == [
        "All 3 methods (Grad-CAM, Ablation-CAM and Score-CAM) agree closely (Spearman >= 0.85, "
        "top-15% IoU >= 0.60); all peak in the right."
    ]
    two = {"variants": {"gradcam": _v("gradcam"), "scorecam": _v("scorecam")},
           "agreement": [_pair("gradcam", "scorecam", 0.05, 0.02)]}
    assert image_findings(_record(two)) == ["Grad-CAM and Score-CAM disagree (Spearman 0.05, top-15% IoU 0.02)."]


def test_degenerate_map_is_named_and_left_out_of_agreement() -> None:
    entry = {
        "variants": {"gradcam": _v("gradcam"), "ablationcam": _v("ablationcam"),
                     "scorecam": _v("scorecam", degenerate="near-empty")},
        "agreement": [_pair("gradcam", "ablationcam", 0.2, 0.1), _pair("gradcam", "scorecam", 0.0, 0.0),
                      _pair("ablationcam", "scorecam", 0.0, 0.0)],
    }
    f = image_findings(_record(entry))
    assert "Score-CAM is degenerate here: its map is near-empty (a few isolated hot pixels)." in f
    assert not any("disagrees with all" in s for s in f)  # only two live methods left
    assert "Grad-CAM and Ablation-CAM disagree (Spearman 0.20, top-15% IoU 0.10)." in f


def test_misclassified_without_boxes_says_where_maxima_are() -> None:
    entry = {"rank": 0, "class": 7, "name": "lynx",
             "variants": {"gradcam": _v("gradcam", region="centre"), "scorecam": _v("scorecam", region="bottom"),
                          "gradcam+aug": _v("gradcam", "aug", region="left")},
             "agreement": []}
    rec = _record(entry, top5=[{"class": 7, "name": "lynx", "prob": 0.51}, {"class": 2, "name": "x", "prob": 0.2},
                               {"class": 1, "name": "tabby", "prob": 0.1}],
                  true_class=1, true_name="tabby", correct=False)
    f = image_findings(rec)
    assert f[0] == (
        "Not the file name's label: the model predicted 'lynx' (p = 0.51); the file name says 'tabby' (ranked 3 "
        "with p = 0.10). The maps explain 'lynx' and point at the centre (Grad-CAM) and the bottom (Score-CAM); "
        "look at the photo before calling this an error (a file-name label can be wrong too)."
    )
    rec["top5"] = rec["top5"][:1]
    assert "(not in the top 5)" in image_findings(rec)[0]


def test_misclassified_with_boxes_uses_pointing_game() -> None:
    entry = {"rank": 0, "class": 7, "name": "lynx",
             "variants": {"gradcam": _v("gradcam", pointing_game=True, energy_pg=0.6),
                          "scorecam": _v("scorecam", pointing_game=False, energy_pg=0.3)},
             "agreement": []}
    rec = _record(entry, top5=[{"class": 7, "name": "lynx", "prob": 0.5}], true_class=1, true_name="tabby",
                  correct=False, box_fraction=0.2)
    f = image_findings(rec)
    assert f[0].endswith(
        "point at the annotated object for 1 of 2 maps (pointing game), with 45% of their energy in the box "
        "on average (the box covers 20% of the image); look at the photo before calling this an error (a "
        "file-name label can be wrong too)."
    )
    rec["correct"] = True
    f = image_findings(rec)
    assert f[0] == "Predicted 'tabby' (p = 0.50), the file name's label."
    assert (
        "1 of 2 maps point inside the annotated object (pointing game); the energy inside the box ranges "
        "from 30% (Score-CAM) to 60% (Grad-CAM), against 20% for a uniform map." in f
    )


def test_best_method_and_smoothing() -> None:
    entry = {
        "variants": {
            "gradcam": _v("gradcam", deletion_auc=0.2, insertion_auc=0.4),
            "scorecam": _v("scorecam", deletion_auc=0.3, insertion_auc=0.35),
            "gradcam+eigen+aug": _v("gradcam", "eigen+aug", deletion_auc=0.1, insertion_auc=0.5),
        },
        "agreement": [_pair("gradcam", "gradcam+eigen+aug", 0.95, 0.8)],
    }
    assert best_variant(entry) == "gradcam+eigen+aug"
    f = image_findings(_record(entry))
    assert (
        "By insertion - deletion AUC, Grad-CAM +eigen+aug is the most faithful here (0.500 - 0.100 = 0.400); "
        "the least faithful is Score-CAM (0.050)." in f
    )
    assert (
        "eigen+aug smoothing changed the maps little (Spearman to the plain map 0.95) and raised the "
        "insertion - deletion gap by 0.200 on average (1 of 1 methods improved)." in f
    )
    same = {"variants": {"gradcam": _v("gradcam", deletion_auc=0.2, insertion_auc=0.4),
                         "scorecam": _v("scorecam", deletion_auc=0.21, insertion_auc=0.4)}, "agreement": []}
    assert "none stands out" in image_findings(_record(same))[-1]
    assert best_variant({"variants": {"gradcam": _v("gradcam")}}) is None


def _rec2(rel: str, a: dict, b: dict, **kw: object) -> dict:
    return {"rel": rel, "targets": [{"rank": 0, "class": 0, "name": "c", "variants": {"A": a, "B": b},
                                     "agreement": [{"a": "A", "b": "B", "spearman": kw.pop("rho", 0.5),
                                                    "top_iou": 0.4}]}], **kw}


def test_summarize_mean_std_and_mean_rank_by_hand() -> None:
    a1 = {"label": "A", "method": "A", "deletion_auc": 0.1, "insertion_auc": 0.5, "average_drop": 10.0}
    b1 = {"label": "B", "method": "B", "deletion_auc": 0.2, "insertion_auc": 0.4, "average_drop": 20.0,
          "degenerate": "empty"}
    a2 = {"label": "A", "method": "A", "deletion_auc": 0.3, "insertion_auc": 0.4}
    b2 = {"label": "B", "method": "B", "deletion_auc": 0.2, "insertion_auc": 0.6}
    recs = [_rec2("p1", a1, b1, rho=0.2, correct=True), _rec2("p2", a2, b2, rho=0.6, correct=False)]
    s = summarize(recs, ["A", "B"])
    da = s["variants"]["A"]["metrics"]["deletion_auc"]
    assert da["mean"] == pytest.approx(0.2) and da["std"] == pytest.approx(0.1) and da["n"] == 2
    assert s["variants"]["A"]["metrics"]["average_drop"] == {"mean": 10.0, "std": 0.0, "n": 1}
    assert s["variants"]["B"]["metrics"]["gap"]["mean"] == pytest.approx((0.2 + 0.4) / 2)
    assert s["variants"]["B"]["metrics"]["degenerate"]["mean"] == pytest.approx(0.5)
    # A: ranks 1,1,1 (p1: del, ins, AD) and 2,2 (p2) -> 1.4; B: 2,2,2,1,1 -> 1.6
    assert s["variants"]["A"]["mean_rank"] == pytest.approx(1.4)
    assert s["variants"]["B"]["mean_rank"] == pytest.approx(1.6)
    assert s["ranking"] == ["A", "B"]
    assert s["agreement"][0]["spearman_mean"] == pytest.approx(0.4)
    f = run_findings(recs, s)
    # A has the lower mean rank, but each is better on one photo: a tie, not a winner
    assert s["photo_ranks"] == {"A": [1.0, 2.0], "B": [2.0, 1.0]}
    assert f[0].startswith("Most faithful on this model: no winner — A and B tie: A is better on 1 of 2 photos, "
                           "worse on 1, sign test p = 1; mean faithfulness rank 1.40 vs 1.60.")
    assert "Deletion AUC 0.200 vs 0.200 (lower is better), Insertion AUC 0.450 vs 0.500 (higher is better)" in f[0]
    assert f[1].startswith("Best localising on this model: not measured — these photos have no boxes or masks")
    # the overall ranking uses the faithfulness columns only here: the guidance already said it
    assert not any(x.startswith("Over 2 photos") for x in f)
    assert "B was degenerate on 1 of 2 photos." in f
    assert ("1 of 2 predictions match the label in the photo's file name (its WordNet id; not checked against the "
            "photo); they differ on p2.") in f
    rows = metric_rows(recs)
    assert len(rows) == 4 and rows[1]["variant"] == "B" and rows[1]["degenerate"] == "empty"
    assert rows[0]["gap"] == pytest.approx(0.4) and rows[2]["average_drop"] is None


def test_map_properties_peak_region() -> None:
    m = np.zeros((30, 30))
    m[2:6, 24:28] = 1.0
    p = map_properties(m)
    assert p["region"] == "top-right" and p["degenerate"] is None
    # centroid of the maxima (rows 2-5, columns 24-27) at pixel centres: (3.5 + 0.5) / 30, (25.5 + 0.5) / 30
    assert p["peak"] == [pytest.approx(4 / 30, abs=1e-4), pytest.approx(26 / 30, abs=1e-4)]
    assert map_properties(np.zeros((8, 8)))["degenerate"] == "empty"


def test_boxes_to_input_frame_classic_and_box_frame() -> None:
    pre = Preprocess("classic", (50, 100))  # H=50, W=100
    assert boxes_to_input_frame([Box(20, 10, 120, 60)], (200, 100), pre) == [(10.0, 5.0, 60.0, 30.0)]
    # the box file's own frame (100x100) differs from the photo (200x200): rescaled first
    sq = Preprocess("classic", (50, 50))
    assert boxes_to_input_frame([Box(10, 10, 20, 20, None, (100, 100))], (200, 200), sq) == [(5.0, 5.0, 10.0, 10.0)]


def test_boxes_to_input_frame_centre_crop_matches_to_tensor() -> None:
    pre = Preprocess("weights", (100, 100), 120)
    # photo 300x200: scale 0.6 -> 180x120, crop offset left 40, top 10
    box = Box(100, 50, 200, 150)
    assert boxes_to_input_frame([box], (300, 200), pre) == [(20.0, 20.0, 80.0, 80.0)]
    photo = np.zeros((200, 300, 3), np.uint8)
    photo[50:150, 100:200] = 255
    x = pre.to_tensor(Image.fromarray(photo))
    mean = np.asarray(pre.mean)[:, None, None]
    std = np.asarray(pre.std)[:, None, None]
    bright = (x.numpy() * std + mean).mean(0) > 0.5
    expected = boxes_to_mask(boxes_to_input_frame([box], (300, 200), pre), (100, 100))
    assert (bright == expected).mean() > 0.98
    # a box entirely outside the crop is dropped
    assert boxes_to_input_frame([Box(0, 0, 30, 200)], (300, 200), pre) == []


def test_categories_ranked_and_disagreement_named_by_hand() -> None:
    from camscope.reporting.findings import category_findings, stability_findings

    # A: most faithful (lower deletion), worst localised; B the reverse; C in between.
    def v(label: str, d: float, e: float, top5: float) -> dict:
        return {"label": label, "method": label, "deletion_auc": d, "energy_pg": e, "top5_energy": top5}

    recs = [
        {"rel": f"p{i}", "targets": [{"rank": 0, "class": 0, "variants": {
            "A": v("A", 0.1, 0.2 + i / 100, 0.5), "B": v("B", 0.3, 0.8, 0.3), "C": v("C", 0.2, 0.5, 0.1)},
            "agreement": []}]}
        for i in range(8)
    ]
    s = summarize(recs, ["A", "B", "C"])
    assert s["categories"]["faithfulness"]["ranking"] == ["A", "C", "B"]
    assert s["categories"]["localisation"]["ranking"] == ["B", "C", "A"]
    assert s["categories"]["complexity"]["ranking"] == ["A", "B", "C"]  # top-5 % energy: higher first
    # overall: faithfulness + localisation columns, not complexity: A 1,1,3,3 = 2; B 3,3,1,1 = 2; C 2
    assert s["variants"]["A"]["mean_rank"] == pytest.approx(2.0) and s["ranking"] == ["A", "B", "C"]
    f = category_findings(s)
    assert ("Faithfulness (Deletion AUC): A is the most faithful: mean rank 1.00 against 2.00 for C, better on 8 "
            "of 8 photos, worse on 0, sign test p = 0.0078; B is the least faithful (3.00).") in f
    assert ("The categories disagree: A is the most faithful but the worst localised (faithfulness mean rank "
            "1.00, localisation 3.00); no single ranking describes these maps.") in f
    assert ("The categories disagree: B is the best localised but the least faithful (localisation mean rank "
            "1.00, faithfulness 3.00); no single ranking describes these maps.") in f
    assert not any("disagree" in x and "complex" in x for x in f)  # complexity describes, it does not judge
    # overall (faithfulness + localisation) every variant has mean rank 2 on every photo: a tie, no winner
    overall = [x for x in run_findings(recs, s) if x.startswith("Over 8 photos")]
    assert overall == ["Over 8 photos, no method ranks first overall across Deletion AUC and Energy pointing game: "
                       "A and B tie, mean rank 2.00 and 2.00, A better on 0 of 8 photos, worse on 0, equal on 8, "
                       "sign test p = 1."]
    # stability: a reversed order at another setting gives tau = -1 and says so
    for i, rec in enumerate(recs):
        for name, x in zip("ABC", (0.3, 0.1, 0.2), strict=True):
            rec["targets"][0]["variants"][name]["stability"] = {
                "deletion_insertion": {"steps=12": {"deletion_auc": x + i / 1000},
                                       "steps=50": {"deletion_auc": rec["targets"][0]["variants"][name]["deletion_auc"]}}}
    s = summarize(recs, ["A", "B", "C"])
    rows = {(r["key"], r["setting"]): r for r in s["stability"]}
    assert rows["deletion_auc", "steps=12"]["kendall_tau"] == pytest.approx(-1.0)
    assert rows["deletion_auc", "steps=12"]["order"] == ["A", "C", "B"]
    assert rows["deletion_auc", "steps=12"]["order_alt"] == ["B", "C", "A"]
    assert rows["deletion_auc", "steps=50"]["kendall_tau"] == pytest.approx(1.0)
    assert stability_findings(s) == [
        "The ranking by Deletion AUC moves with the metric's settings (Kendall tau steps=12: -1.00, "
        "steps=50: 1.00); at steps=12 the order changes, so read it with care."
    ]


# ---- guidance: which method to trust on this run's model -------------------------------------


def _table(values: dict[str, list[dict]]) -> list[dict]:
    """Records from a hand-built measurements table: variant -> one dict of values per photo."""
    n = len(next(iter(values.values())))
    return [{"rel": f"p{i}.jpg", "targets": [{"rank": 0, "class": 0, "variants": {
        name: {"label": name, "method": name, **rows[i]} for name, rows in values.items()}, "agreement": []}]}
        for i in range(n)]


def test_sign_test_by_hand() -> None:
    from camscope.reporting.findings import sign_test

    assert sign_test(9, 1) == pytest.approx(2 * 11 / 1024)  # 2 * (C(10,0) + C(10,1)) / 2^10
    assert sign_test(8, 2) == pytest.approx(2 * 56 / 1024)
    assert sign_test(5, 5) == 1.0 and sign_test(0, 0) == 1.0


def test_guidance_names_the_decisively_most_faithful_method_with_its_numbers() -> None:
    from camscope.reporting.findings import guidance_findings

    # S beats G on deletion and insertion on 9 of 10 photos; R is worst everywhere
    s = [{"deletion_auc": 0.10, "insertion_auc": 0.60} for _ in range(10)]
    g = [{"deletion_auc": 0.20, "insertion_auc": 0.50} for _ in range(9)] + [{"deletion_auc": 0.05, "insertion_auc": 0.70}]
    r = [{"deletion_auc": 0.40, "insertion_auc": 0.30} for _ in range(10)]
    summary = summarize(_table({"G": g, "S": s, "R": r}), ["G", "S", "R"])
    assert summary["categories"]["faithfulness"]["ranking"] == ["S", "G", "R"]
    assert summary["categories"]["faithfulness"]["photo_ranks"]["S"] == [1.0] * 9 + [2.0]
    f = guidance_findings(summary, model="net:build")
    assert f[0] == (
        "Most faithful on net:build: S, ahead of the runner-up G: better on 9 of 10 photos, worse on 1, "
        "sign test p = 0.021; mean faithfulness rank 1.10 vs 1.90. Means, S vs G: Deletion AUC 0.100 vs 0.185 "
        "(lower is better), Insertion AUC 0.600 vs 0.520 (higher is better)."
    )
    assert f[1].startswith("Best localising on net:build: not measured — these photos have no boxes or masks")


def test_guidance_does_not_declare_a_winner_on_a_small_lead_or_a_tie() -> None:
    from camscope.reporting.findings import guidance_findings

    # 6 of 10 photos: a lead the photos do not settle (sign test p = 0.75)
    a = [{"deletion_auc": 0.1} for _ in range(6)] + [{"deletion_auc": 0.3} for _ in range(4)]
    b = [{"deletion_auc": 0.2} for _ in range(10)]
    f = guidance_findings(summarize(_table({"A": a, "B": b})))
    assert f[0] == (
        "Most faithful on this model: no clear winner — A leads B (mean faithfulness rank 1.40 vs 1.60) but is "
        "better on 6 of 10 photos, worse on 4, sign test p = 0.75, which 10 photos do not settle. "
        "Means, A vs B: Deletion AUC 0.180 vs 0.200 (lower is better)."
    )
    # equal values on every photo: a tie, said as one
    same = [{"deletion_auc": 0.2, "insertion_auc": 0.5} for _ in range(10)]
    f = guidance_findings(summarize(_table({"A": same, "B": same})))
    assert f[0].startswith("Most faithful on this model: no winner — A and B tie: A is better on 0 of 10 photos, "
                           "worse on 0, equal on 10")
    assert category_findings_of(same)[0] == (
        "Faithfulness (Deletion AUC and Insertion AUC): A and B tie for the most faithful: mean rank 1.50 and 1.50, "
        "A better on 0 of 10 photos, worse on 0, equal on 10, sign test p = 1."
    )


def category_findings_of(rows: list[dict]) -> list[str]:
    from camscope.reporting.findings import category_findings

    return category_findings(summarize(_table({"A": rows, "B": rows})))


def test_guidance_best_localising_with_boxes_and_refused_methods() -> None:
    from camscope.reporting.findings import guidance_findings

    hit = {"pointing_game": True, "energy_pg": 0.7}
    miss = {"pointing_game": False, "energy_pg": 0.2}
    summary = summarize(_table({"Grad-CAM": [miss] * 10, "Layer-CAM": [hit] * 10}))
    f = guidance_findings(summary, model="resnet50", random_weights=True,
                          refused={"rollout": "needs attention blocks (resnet50 has none)"})
    assert f[0] == ("The model has random weights: what follows describes these maps on resnet50, "
                    "not a trained model.")
    assert f[2].startswith("Best localising on resnet50: Layer-CAM, ahead of the runner-up Grad-CAM: better on 10 "
                           "of 10 photos, worse on 0, sign test p = 0.002;")
    assert "Pointing game 100% vs 0% (higher is better), Energy pointing game 70% vs 20% (higher is better)" in f[2]
    assert f[3] == ("Not run on resnet50, though asked for: rollout (needs attention blocks (resnet50 has none)); "
                    "`camscope methods --model resnet50` lists the methods that apply.")


def test_guidance_on_one_photo_is_never_a_winner() -> None:
    from camscope.reporting.findings import guidance_findings

    f = guidance_findings(summarize(_table({"A": [{"deletion_auc": 0.1}], "B": [{"deletion_auc": 0.3}]})))
    assert f[0].startswith("Most faithful on this model: no clear winner — A leads B (mean faithfulness rank 1.00 vs "
                           "2.00) but is better on 1 of 1 photo, worse on 0, sign test p = 1, which 1 photo does not "
                           "settle.")


def test_run_says_when_every_pair_agrees_closely() -> None:
    def recs(rho: float, iou: float) -> list[dict]:
        a = {"label": "A", "method": "A"}
        return [{"rel": f"p{i}", "targets": [{"rank": 0, "class": 0, "variants": {"A": a, "B": {**a, "label": "B"},
                                                                             "C": {**a, "label": "C"}},
                 "agreement": [{"a": "A", "b": "B", "spearman": rho, "top_iou": iou},
                               {"a": "A", "b": "C", "spearman": 0.99, "top_iou": 0.9},
                               {"a": "B", "b": "C", "spearman": 0.97, "top_iou": 0.8}]}]} for i in range(3)]

    close = recs(0.95, 0.73)
    f = [x for x in run_findings(close, summarize(close)) if x.startswith("On average")]
    assert f == ["On average A and C agree most (Spearman 0.99, top-15% IoU 0.90); A and B least (Spearman 0.95). "
                 "Every pair agrees closely on average (Spearman >= 0.95, top-15% IoU >= 0.73): on this model and "
                 "layer the choice among these methods changes the map little."]
    far = recs(0.95, 0.3)  # rank-correlated but their top regions differ: not "close"
    assert not any("Every pair" in x for x in run_findings(far, summarize(far)))
