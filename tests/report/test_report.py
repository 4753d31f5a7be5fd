"""The HTML report: self-contained, escaped, built from the store alone, with recommendations."""
import re

from deploybench.report import build_report
from deploybench.report.html import recommendations


def test_report_is_self_contained_and_escapes_user_strings(report_workspace, tmp_path):
    out = build_report(report_workspace, tmp_path / "r" / "index.html")
    html = out.read_text()
    assert html.count("<script") == 1  # ours only: every user string is escaped
    assert "&lt;script&gt;alert(" in html or "\\u003cscript\\u003e" in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # nothing loaded from outside
    assert html.count("<svg") >= 4  # latency fronts for 2 batch sizes + size + MACs, plus training figures
    for needle in ["Recommendations", "Pareto front", "no real speed-up", "Lineage", "Per-class", "Provenance",
                   "test cpu", "profile run --model"]:
        assert needle in html, needle
    assert oct(out.stat().st_mode & 0o777) == "0o644"


def test_recommendations_pick_the_fastest_within_each_threshold():
    rows = [dict(dataset="d", backend="b", batch_size=1, variant=v, model="m", stages=["train", s], chain=f"train+{s}",
                 latency_ms_p50=lat, accuracy_top1=acc)
            for v, s, lat, acc in [("a", "fp32", 10.0, 0.90), ("b", "int8", 4.0, 0.896), ("c", "prune", 1.0, 0.885)]]
    (rec,) = recommendations(rows)
    assert [p["variant"] for p in rec["picks"]] == ["b", "b", "c"]  # within 0.5, 1 and 2 points of 90%


def test_labels_of_front_points_at_one_spot_do_not_overprint_each_other():
    # The quantized forms of one model share its MACs and differ in accuracy by hundredths: in the 2026-11-28
    # sample report the labels of lenet's front points at 416,520 MACs were drawn over each other.
    import re

    from deploybench.report.plots import LABEL_PT, pareto_svg

    def drawn(points):  # {text: (x, y)} of the SVG's text elements (one line each)
        svg = pareto_svg(points, "macs", "MACs", "accuracy vs MACs")
        out = {}
        for attrs, text in re.findall(r"<text([^>]*)>([^<]*)</text>", svg):
            at = re.search(r'x="([\d.]+)" y="([\d.]+)"', attrs) or re.search(r"translate\(([\d.]+) ([\d.]+)\)", attrs)
            out[text] = (float(at[1]), float(at[2]))
        return out

    names = ["lenet:fp32", "lenet:quantize[int8-pt2e]", "lenet:quantize[dynamic]"]
    points = [dict(accuracy_top1=acc, macs=416_520, label=name, pareto=True)
              for name, acc in zip(names, (0.8649, 0.8657, 0.8653))]
    points.append(dict(accuracy_top1=0.8354, macs=133_740, label="lenet:prune", pareto=True))
    texts = drawn(points)
    boxes = [(x, y - LABEL_PT, x + 0.5 * LABEL_PT * len(n), y) for n, (x, y) in texts.items() if n.startswith("lenet")]
    assert len(boxes) == 4
    for i, a in enumerate(boxes):  # SVG y grows downwards
        for b in boxes[i + 1:]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)
    # Most accurate on top (smallest SVG y).
    assert texts["lenet:quantize[int8-pt2e]"][1] < texts["lenet:quantize[dynamic]"][1] < texts["lenet:fp32"][1]

    # Seven at one spot: the two most accurate are named, the other five counted.
    more = [dict(accuracy_top1=0.86 + i / 1e4, macs=416_520, label=f"lenet:v{i}", pareto=True) for i in range(7)]
    texts = drawn(more + points[-1:])
    assert {"lenet:v6", "lenet:v5", "+5 more here (see the table)"} <= set(texts)
    assert not {"lenet:v0", "lenet:v4"} & set(texts)
