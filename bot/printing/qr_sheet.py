"""Stairwell QR sheets: one A4 page per building, to be printed and posted in the stairwell.

Each page carries, in the reader's language (the words come from the catalogs): a heading, the
building's name in large type, a large QR code (the building's resident invite), the three
steps "scan → join your building → report", who looks after the building (the grid worker's
name, or the grid head's) and a footer with the community and the validity. Internal codes
(building, grid, token) are never printed: the code is the only way in.

Text is drawn with the bundled Chinese font, so a page prints the same on any machine.
:func:`render_page` returns the page with the place of every text it drew, so that a test can
check each one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bot.fonts import pil_font
from bot.printing.qr import qr_image, text_width, wrap

if TYPE_CHECKING:
    from PIL.Image import Image

#: A4 portrait at 150 dpi.
PAGE_SIZE = (1240, 1754)
DPI = 150
MARGIN = 80
#: Side of the printed code in pixels (about 15 cm at 150 dpi).
QR_SIDE = 880


@dataclass(frozen=True)
class SheetWords:
    """The sentences every page of one sheet shares (already translated)."""

    heading: str
    steps: str
    footer: str


@dataclass(frozen=True)
class BuildingPage:
    """One building's page: its display name, the link its code holds, and who looks after it
    (a whole sentence, e.g. "本楼网格员：王网格员"; empty when nobody is known)."""

    name: str
    link: str
    caretaker: str = ""


@dataclass(frozen=True)
class DrawnText:
    """A line drawn on a page: its text, font size and weight, and its ink's box."""

    text: str
    size: int
    bold: bool
    xy: tuple[int, int]


@dataclass
class RenderedPage:
    """A page's picture, the lines drawn on it and the box of its QR code."""

    image: Image
    texts: list[DrawnText] = field(default_factory=list)
    qr_box: tuple[int, int, int, int] = (0, 0, 0, 0)


def _fit(
    text: str, max_width: int, sizes: Sequence[int], max_lines: int, bold: bool
) -> tuple[int, list[str]]:
    """The largest size among ``sizes`` at which ``text`` wraps into ``max_lines`` or fewer."""
    lines: list[str] = []
    for size in sizes:
        lines = wrap(text, pil_font(size, bold=bold), max_width)
        if len(lines) <= max_lines:
            return size, lines
    return sizes[-1], lines[:max_lines]


def render_page(page: BuildingPage, words: SheetWords) -> RenderedPage:
    """Draw one building's page."""
    from PIL import Image as PILImage
    from PIL import ImageDraw

    width, height = PAGE_SIZE
    image = PILImage.new("RGB", PAGE_SIZE, "white")
    draw = ImageDraw.Draw(image)
    out = RenderedPage(image=image)
    inner = width - 2 * MARGIN

    def centred(lines: list[str], size: int, bold: bool, y: int, gap: float = 1.3) -> int:
        font = pil_font(size, bold=bold)
        for line in lines:
            x = (width - text_width(draw, line, font)) // 2
            draw.text((x, y), line, fill="black", font=font)
            out.texts.append(DrawnText(line, size, bold, (x, y)))
            y += int(size * gap)
        return y

    y = MARGIN
    size, lines = _fit(words.heading, inner, (64, 56, 48, 40), 1, True)
    y = centred(lines, size, True, y)
    draw.line((MARGIN, y + 6, width - MARGIN, y + 6), fill=(180, 180, 180), width=3)
    y += 36
    size, lines = _fit(page.name, inner, (120, 104, 88, 76, 64, 56), 2, True)
    y = centred(lines, size, True, y, 1.2)
    y += 20
    side = QR_SIDE
    code = qr_image(page.link, box_size=4, border=4).resize(
        (side, side), PILImage.Resampling.NEAREST
    )
    left = (width - side) // 2
    image.paste(code, (left, y))
    out.qr_box = (left, y, left + side, y + side)
    y += side + 30
    size, lines = _fit(words.steps, inner, (48, 44, 40, 36, 32), 2, False)
    y = centred(lines, size, False, y)
    if page.caretaker:
        y += 10
        size, lines = _fit(page.caretaker, inner, (44, 40, 36, 32), 2, False)
        y = centred(lines, size, False, y)
    size, lines = _fit(words.footer, inner, (30, 26, 22), 2, False)
    footer_y = max(y + 20, height - MARGIN - int(size * 1.3) * len(lines))
    centred(lines, size, False, footer_y)
    return out


def write_sheet(
    pages: Sequence[tuple[str, BuildingPage]], words: SheetWords, folder: Path, stem: str
) -> list[Path]:
    """Write each page as ``<stem>-<name>.png`` (``name`` given with each page, e.g. the
    building's code: it is only a file name) and all of them as ``<stem>.pdf``, ready to
    print. Returns the written paths, PNGs first in page order, then the PDF."""
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    images: list[Image] = []
    for name, page in pages:
        rendered = render_page(page, words)
        path = folder / f"{stem}-{name}.png"
        rendered.image.save(path, format="PNG", dpi=(DPI, DPI))
        written.append(path)
        images.append(rendered.image)
    if images:
        pdf = folder / f"{stem}.pdf"
        images[0].save(pdf, format="PDF", resolution=DPI, save_all=True, append_images=images[1:])
        written.append(pdf)
    return written
