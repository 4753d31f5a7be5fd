"""The HTML report: self-contained, escaped, built from the store alone, with recommendations; its variants
table shows every cell as the CLI table and Markdown do."""

import re
from html.parser import HTMLParser

from deploybench.profile.columns import COLUMNS
from deploybench.profile.compare import compare_rows, to_markdown, to_table
from deploybench.report import build_report
from deploybench.report.html import recommendations


def test_report_is_self_contained_and_escapes_user_strings(report_workspace, tmp_path):
    out = build_report(report_workspace, tmp_path / "r" / "index.html")
    html = out.read_text()
    assert html.count("<script") == 1  # ours only: every user string is escaped
    assert "&lt;script&gt;alert(" in html or "\\u003cscript\\u003e" in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # nothing loaded from outside
    assert html.count("<svg") >= 4  # latency fronts for 2 batch sizes + size + MACs, plus training figures
    for needle in [
        "Recommendations",
        "Pareto front",
        "no real speed-up",
        "Lineage",
        "Per-class",
        "Provenance",
        "test cpu",
        "profile run --model",
    ]:
        assert needle in html, needle
    assert oct(out.stat().st_mode & 0o777) == "0o644"


def test_recommendations_pick_the_fastest_within_each_threshold():
    rows = [
        dict(
            dataset="d",
            backend="b",
            batch_size=1,
            variant=v,
            model="m",
            stages=["train", s],
            chain=f"train+{s}",
            latency_ms_p50=lat,
            accuracy_top1=acc,
            stable=stable,
        )
        for v, s, lat, acc, stable in [
            ("a", "fp32", 10.0, 0.90, True),
            ("b", "int8", 4.0, 0.896, True),
            ("c", "prune", 1.0, 0.885, True),
            ("d", "int8", 0.5, 0.899, False),
        ]
    ]
    (rec,) = recommendations(rows)
    # within 0.5, 1 and 2 points of 90%; "d" would be fastest everywhere, but its timing is unstable
    assert [p["variant"] for p in rec["picks"]] == ["b", "b", "c"]


def test_labels_of_front_points_at_one_spot_do_not_overprint_each_other():
    # The quantized forms of one model share its MACs and differ in accuracy by hundredths, so their front
    # points sit at one spot of the plot and, unless stacked, their labels overprint each other.
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
    points = [
        dict(accuracy_top1=acc, macs=416_520, label=name, pareto=True)
        for name, acc in zip(names, (0.8649, 0.8657, 0.8653), strict=True)
    ]
    points.append(dict(accuracy_top1=0.8354, macs=133_740, label="lenet:prune", pareto=True))
    texts = drawn(points)
    boxes = [(x, y - LABEL_PT, x + 0.5 * LABEL_PT * len(n), y) for n, (x, y) in texts.items() if n.startswith("lenet")]
    assert len(boxes) == 4
    for i, a in enumerate(boxes):  # SVG y grows downwards
        for b in boxes[i + 1 :]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)
    # Most accurate on top (smallest SVG y).
    assert texts["lenet:quantize[int8-pt2e]"][1] < texts["lenet:quantize[dynamic]"][1] < texts["lenet:fp32"][1]

    # Seven at one spot: the two most accurate are named, the other five counted.
    more = [dict(accuracy_top1=0.86 + i / 1e4, macs=416_520, label=f"lenet:v{i}", pareto=True) for i in range(7)]
    texts = drawn(more + points[-1:])
    assert {"lenet:v6", "lenet:v5", "+5 more here (see the table)"} <= set(texts)
    assert not {"lenet:v0", "lenet:v4"} & set(texts)


# -- one definition per column: the CLI table, Markdown and the HTML report show the same text --------------
HEADERS = [c.header for c in COLUMNS]


class _TableParser(HTMLParser):
    """The header and body cells (text content) of the table with id `table_id`."""

    def __init__(self, table_id):
        super().__init__()
        self.table_id, self.inside, self.cell = table_id, False, None
        self.head, self.rows = [], []

    def handle_starttag(self, tag, attrs):
        if tag == "table" and dict(attrs).get("id") == self.table_id:
            self.inside = True
        elif self.inside and tag == "tr":
            self.rows.append([])
        elif self.inside and tag in ("td", "th"):
            self.cell = ""

    def handle_endtag(self, tag):
        if tag == "table":
            self.inside = False
        elif self.inside and tag in ("td", "th") and self.cell is not None:
            (self.head if tag == "th" else self.rows[-1]).append(self.cell.strip())
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


def html_table(html: str) -> tuple[list[str], list[list[str]]]:
    parser = _TableParser("variants")
    parser.feed(html)
    return parser.head, [r for r in parser.rows if r]


def cli_table(text: str) -> tuple[list[str], list[list[str]]]:
    """Split `to_table`'s text into cells by the spans of its dashed rule line."""
    lines = text.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.startswith("---"))
    spans = [(m.start(), m.end()) for m in re.finditer(r"-+", lines[rule])]
    body = lines[rule + 1 : lines.index("", rule)]

    def split(line):
        return [line[a : b if i + 1 < len(spans) else None].strip() for i, (a, b) in enumerate(spans)]

    return split(lines[rule - 1]), [split(line) for line in body]


def markdown_table(text: str) -> tuple[list[str], list[list[str]]]:
    rows = [
        [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        for line in text.splitlines()
        if line.startswith("|")
    ]
    return rows[0], rows[2:]


def test_cli_table_and_html_show_every_cell_the_same(report_workspace, tmp_path):
    rows = compare_rows(report_workspace, include_skipped=False)
    cli_head, cli_rows = cli_table(to_table(rows))
    html_head, html_rows = html_table(build_report(report_workspace, tmp_path / "index.html").read_text())
    md_head, md_rows = markdown_table(to_markdown(rows))
    assert cli_head == html_head == md_head == HEADERS
    assert len(cli_rows) == len(rows) == 4
    for row, cli, html, md in zip(rows, cli_rows, html_rows, md_rows, strict=True):
        for column, a, b, c in zip(COLUMNS, cli, html, md, strict=True):
            assert a == b == c == column.cell(row), (column.key, a, b, c)


def test_known_rows_show_formatted_values(report_workspace, tmp_path):
    """The fixture's rows store pct_of_peak 38.3 (a percentage, shown as is), peak_mem_bytes 5_242_880 (shown in
    MB) and accuracy as a fraction (shown as a percentage)."""
    rows = compare_rows(report_workspace, include_skipped=False)
    html = build_report(report_workspace, tmp_path / "index.html").read_text()
    for head, body in (cli_table(to_table(rows)), html_table(html), markdown_table(to_markdown(rows))):
        cells = [dict(zip(head, r, strict=True)) for r in body]
        assert {c["% of peak"] for c in cells} == {"38.3"}
        assert {c["Peak mem"] for c in cells} == {"5.0 MB"}
        assert sorted({c["Top-1 %"] for c in cells}) == ["50.00", "55.00"]
        assert {c["Size"] for c in cells} == {"244.1 KB", "100 B"}
        assert {c["Params"] for c in cells} == {"61.71K"}
        child = [c for c in cells if c["Top-1 %"] == "50.00"]
        # the child's timing is unstable: no speed-up is claimed for it, only the flag
        assert {c["Δ top-1 pt"] for c in child} == {"-5.00"} and {c["Speed-up"] for c in child} == {"-"}
        assert all("unstable" in c["Flags"] for c in child)
