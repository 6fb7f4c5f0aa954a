"""The bulletin's chart: bars of received and done orders per grid and a 满意率 line, with
Chinese labels drawn with the bundled font on any machine."""

from __future__ import annotations

import io
import warnings

from PIL import Image

from bot.fonts import cjk_font_path
from bot.reports.chart import NAME_MAX_CHARS, GridBar, _short, render_grid_chart
from tests.glyphs import NOT_A_GLYPH, assert_chinese_drawn, differs

LABELS = {"received": "受理量", "done": "办结量", "satisfaction": "满意率"}
TITLE = "2026年11月 新华社区各网格受理与办结"


def _render(
    bars: list[GridBar], labels: dict[str, str] = LABELS, title: str = TITLE
) -> Image.Image:
    # matplotlib warns "Glyph … missing from font(s)" when it falls back to boxes: an error here.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        png = render_grid_chart(bars, title=title, labels=labels)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def test_the_font_comes_with_the_project_not_the_machine() -> None:
    path = cjk_font_path()
    assert "site-packages" in path.parts or "weblate_fonts" in str(path)
    assert not str(path).startswith("/usr/share/fonts")
    assert_chinese_drawn("受理量办结量满意率第一网格新华社区年月")


def test_a_chart_of_one_grid_draws_its_chinese_labels() -> None:
    bars = [GridBar("第一网格", received=12, done=10, satisfaction=0.9)]
    image = _render(bars)
    assert image.width >= 600 and image.height >= 400
    # Same chart, other Chinese words of the same length in the legend, axis labels and title:
    # drawn as boxes the two would be identical; drawn as glyphs they differ.
    other = {"received": "收件数", "done": "完成数", "satisfaction": "好评率"}
    assert differs(image, _render(bars, other, "2026年11月 新华社区各网格收件与完成"))


def test_boxes_would_be_noticed() -> None:
    # The check above has teeth: two different strings of characters the font lacks draw the
    # same picture.
    bars = [GridBar("grid", 3, 2, 0.5)]
    tofu = {k: NOT_A_GLYPH * 3 for k in LABELS}
    tofu2 = {k: "\U000f0001" * 3 for k in LABELS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = Image.open(io.BytesIO(render_grid_chart(bars, title="t", labels=tofu)))
        b = Image.open(io.BytesIO(render_grid_chart(bars, title="t", labels=tofu2)))
    assert not differs(a, b)


def test_forty_grids_with_long_names_stay_readable() -> None:
    bars = [
        GridBar(
            f"新华社区第{i}网格（滨河东路片区）", received=i % 9, done=i % 5, satisfaction=None
        )
        if i % 4 == 0
        else GridBar(f"新华社区第{i}网格（滨河东路片区）", i % 9, i % 5, (i % 10) / 10)
        for i in range(40)
    ]
    image = _render(bars)
    one = _render(bars[:1])
    assert image.width > one.width  # the picture grows with the grids
    assert image.width <= 28 * 120
    assert _short(bars[0].name).endswith("…")
    assert len(_short(bars[0].name)) == NAME_MAX_CHARS
    assert _short("第一网格") == "第一网格"


def test_no_grids_gives_a_no_data_picture() -> None:
    image = _render([], {**LABELS, "no_data": "本月无数据"}, "2026年11月")
    other = _render([], {**LABELS, "no_data": "暂无数据啊"}, "2026年11月")
    assert differs(image, other)  # the sentence is drawn, in Chinese
    gray = image.convert("L")
    width, height = gray.size
    middle = gray.crop((width // 4, height // 3, 3 * width // 4, 2 * height // 3))
    assert middle.getextrema()[0] < 128  # there is ink in the middle
