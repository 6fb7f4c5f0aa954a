"""Checks that text is really drawn with the bundled Chinese font, not as missing-glyph boxes."""

from __future__ import annotations

from typing import Any

from PIL import Image, ImageChops, ImageDraw

from bot.fonts import missing_glyphs, pil_font

#: A code point no font maps (plane 15 private use): drawing it shows the font's .notdef box.
NOT_A_GLYPH = "\U000f0000"


def draw_alone(text: str, size: int = 48, *, bold: bool = False) -> Image.Image:
    """``text`` drawn black on white with the bundled font, cropped to its ink."""
    font = pil_font(size, bold=bold)
    image = Image.new("L", (size * (len(text) + 2), size * 2), 255)
    ImageDraw.Draw(image).text((size // 2, size // 2), text, fill=0, font=font)
    box = ImageChops.invert(image).getbbox()
    return image.crop(box) if box else image


def assert_chinese_drawn(text: str, size: int = 48) -> None:
    """Every character of ``text`` is in the font's cmap and draws differently from .notdef."""
    assert missing_glyphs(text) == "", f"the font lacks {missing_glyphs(text)!r}"
    box = draw_alone(NOT_A_GLYPH, size)
    for ch in dict.fromkeys(text):
        if ch.isspace():
            continue
        drawn = draw_alone(ch, size)
        assert drawn.size != box.size or ImageChops.difference(drawn, box).getbbox(), (
            f"{ch!r} is drawn as the missing-glyph box"
        )


def differs(a: Any, b: Any) -> bool:
    """Two pictures differ somewhere."""
    return ImageChops.difference(a.convert("RGB"), b.convert("RGB")).getbbox() is not None
