"""Stairwell QR sheets: one page per building whose printed code, read back by a QR decoder,
is that building's resident invite; the words are Chinese (English with --lang en), drawn with
the bundled font, and no internal code is printed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import zxingcpp
from PIL import Image, ImageDraw
from sqlalchemy import select

from bot.cli import main
from bot.core.invites import parse_token
from bot.fonts import pil_font
from bot.printing.qr import qr_png
from bot.printing.qr_sheet import BuildingPage, SheetWords, render_page
from models import Building, Invite
from models.db import make_engine, make_sessionmaker
from tests.glyphs import assert_chinese_drawn, differs

DEMO = str(Path(__file__).resolve().parents[2] / "bot" / "demo" / "community.yaml")
PREFIX = "https://t.me/xinhua_bot?start="
ZH = SheetWords(
    heading="扫码报事 · 居民登记",
    steps="用 Telegram 扫码 → 绑定本楼栋 → 随时报事",
    footer="达川区三里坪街道新华社区 · 有效期至 {until}",
)


@pytest.fixture
def cli_db(database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("GRIDBOT_DATABASE_URL", database_url)
    monkeypatch.setenv("GRIDBOT_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("GRIDBOT_SECRET_KEY", "sheet-test-key")
    assert main(["import", DEMO]) == 0
    return database_url


def invite_of(url: str, token: str) -> tuple[Invite, str]:
    """The invite a token names, and the code of its building."""

    async def read() -> tuple[Invite, str]:
        engine = make_engine(url)
        try:
            async with make_sessionmaker(engine)() as session:
                invite = await session.get(Invite, parse_token(token)[0])
                assert invite is not None
                code = await session.scalar(
                    select(Building.code).where(Building.id == invite.building_id)
                )
                assert code is not None
                return invite, code
        finally:
            await engine.dispose()

    return asyncio.run(read())


def decode(path: Path) -> str:
    with Image.open(path) as page:
        found = zxingcpp.read_barcodes(page.convert("L"))
    assert [b.format for b in found] == [zxingcpp.BarcodeFormat.QRCode], path
    return str(found[0].text)


def sheet(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> list[Path]:
    capsys.readouterr()
    out = tmp_path / "sheets"
    assert main(["qr-sheet", "--out", str(out), "--bot-username", "xinhua_bot", *args]) == 0
    return [Path(p) for p in capsys.readouterr().out.split()]


def test_each_page_carries_its_buildings_invite_and_chinese_words(
    cli_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = sheet(tmp_path, capsys, "--grid", "xh-g1-m1")
    pages = [p for p in paths if p.suffix == ".png"]
    assert [p.name for p in pages] == [f"sheet-xh-g1-m1-xh-b0{i}.png" for i in (1, 2, 3)]
    assert paths[-1].name == "sheet-xh-g1-m1.pdf"
    for i, path in enumerate(pages, start=1):
        link = decode(path)
        assert link.startswith(PREFIX)
        invite, building = invite_of(cli_db, link.removeprefix(PREFIX))
        assert building == f"xh-b0{i}"
        assert (invite.role, invite.max_uses) == ("resident", None)
        until = invite.expires_at.astimezone().date()
        # The printed page is exactly this page: the building's name, the three steps, the
        # grid worker, the community and the date, in Chinese; no code but the QR code.
        expected = render_page(
            BuildingPage(f"翠屏小区{i}栋", link, "本楼网格员：王网格员"),
            SheetWords(ZH.heading, ZH.steps, ZH.footer.format(until=until.isoformat())),
        )
        with Image.open(path) as printed:
            assert not differs(printed, expected.image), path
        texts = [t.text for t in expected.texts]
        assert texts[:2] == ["扫码报事 · 居民登记", f"翠屏小区{i}栋"]
        assert "本楼网格员：王网格员" in texts
        assert not any("xh-" in t or "start=" in t for t in texts)


def test_a_building_without_a_worker_names_the_grid_head_and_english_on_request(
    cli_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = sheet(tmp_path, capsys, "--grid", "xh-g2-m2", "--lang", "en")
    first = next(p for p in paths if p.name == "sheet-xh-g2-m2-xh-b12.png")
    link = decode(first)
    invite, building = invite_of(cli_db, link.removeprefix(PREFIX))
    assert building == "xh-b12"
    until = invite.expires_at.astimezone().date().isoformat()
    expected = render_page(
        BuildingPage("供销社家属院1栋", link, "Grid head of this building: 罗建国"),
        SheetWords(
            "Scan to report · residents' sign-up",
            "Scan with Telegram → join your building → report a problem",
            f"达川区三里坪街道新华社区 · valid until {until}",
        ),
    )
    with Image.open(first) as printed:
        assert not differs(printed, expected.image)


def test_the_words_are_drawn_with_real_chinese_glyphs() -> None:
    page = render_page(
        BuildingPage("达川区第二小学教师宿舍", "https://t.me/x?start=i1_abc", "本楼网格员：冯婷"),
        SheetWords(ZH.heading, ZH.steps, ZH.footer.format(until="2027-05-28")),
    )
    image = page.image.convert("L")
    assert len(page.texts) >= 6  # heading, the name on two lines, steps, worker, footer
    for drawn in page.texts:
        assert_chinese_drawn(drawn.text)
        # What is on the page at that place is that text in the bundled font.
        alone = Image.new("L", image.size, 255)
        ImageDraw.Draw(alone).text(
            drawn.xy, drawn.text, fill=0, font=pil_font(drawn.size, bold=drawn.bold)
        )
        box = alone.point(lambda v: 255 - v).getbbox()
        assert box is not None, drawn.text
        assert not differs(image.crop(box), alone.crop(box)), drawn.text
    # A page is one A4 portrait sheet at 150 dpi.
    assert page.image.size == (1240, 1754)
    left, top, right, bottom = page.qr_box
    assert right - left >= 800 and bottom - top >= 800  # a large code


def test_an_invite_picture_draws_its_chinese_caption(tmp_path: Path) -> None:
    plain = qr_png("https://t.me/x?start=i1_abc", tmp_path / "plain.png")
    captioned = qr_png(
        "https://t.me/x?start=i1_abc",
        tmp_path / "sub" / "zh.png",
        caption="居民邀请 · 翠屏小区1栋",
    )
    with Image.open(plain) as a, Image.open(captioned) as b:
        assert a.width == a.height
        assert b.width == a.width and b.height > a.height  # the Chinese line is there
        assert decode(captioned) == "https://t.me/x?start=i1_abc"
        caption = b.convert("L").crop((0, a.height, b.width, b.height))
    assert caption.getextrema()[0] < 128  # with ink
    assert_chinese_drawn("居民邀请翠屏小区栋")
