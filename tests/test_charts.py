"""Charts are self-contained SVG with a title and a text description of every value."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET

from civiscore.web import charts

NS = "{http://www.w3.org/2000/svg}"


def _parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{NS}svg" and root.get("role") == "img"
    assert root.find(f"{NS}title") is not None and root.find(f"{NS}desc") is not None
    return root


def test_histogram_describes_every_bar() -> None:
    root = _parse(charts.histogram([("AAA", 3), ("B", 12)], "Subjects per band"))
    assert root.findtext(f"{NS}desc") == "AAA: 3 subjects; B: 12 subjects"
    assert len(root.findall(f"{NS}rect")) == 2


def test_band_scale_marks_the_score() -> None:
    root = _parse(charts.band_scale([("A", 960.0), ("B", 850.0), ("D", None)], 900, "B"))
    assert "Score 900, band B" in (root.findtext(f"{NS}desc") or "")


def test_line_and_multi_line_charts_list_their_points() -> None:
    days = [dt.date(2026, 1, 31), dt.date(2026, 2, 28)]
    root = _parse(
        charts.line_chart(list(zip(days, [1000.0, 900.0], strict=True)), "Score", "points")
    )
    assert root.findtext(f"{NS}desc") == "2026-01: 1000; 2026-02: 900"
    multi = _parse(
        charts.multi_line({"a": [(days[0], 2.0)], "b": [(days[1], 5.0)]}, "Listings", "subjects")
    )
    assert "a: 2026-01-31 2" in (multi.findtext(f"{NS}desc") or "")


def test_labels_are_escaped() -> None:
    root = _parse(charts.hbar([("<script>", 1)], "x"))
    assert "<script>" in (root.findtext(f"{NS}desc") or "")  # as text, not as markup
