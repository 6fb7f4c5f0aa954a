"""The bundled Chinese font: one place to find it for Pillow pictures and matplotlib charts.

Chinese must render on any machine, so the font is not looked up among the system's fonts: it
comes with the ``weblate-fonts`` package (a dependency installed with Gridbot from PyPI). Its
Kurinto Sans SC is an OpenType/TrueType font under the SIL Open Font License 1.1 that covers
every Han character of GBK (20 902) and Latin as well, so a line mixing Chinese, digits and
English is drawn with one font.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.font_manager import FontProperties
    from PIL.ImageFont import FreeTypeFont

_PACKAGE = "weblate_fonts"
_FOLDER = "static/weblate_fonts/kurinto/ttf"
_REGULAR = "KurintoSansSC-Rg.ttf"
_BOLD = "KurintoSansSC-Bd.ttf"


class FontMissingError(RuntimeError):
    """The bundled font is not installed (the project was installed without its dependencies)."""


def _font_file(name: str) -> Path:
    try:
        base = resources.files(_PACKAGE)
    except ModuleNotFoundError as err:
        raise FontMissingError(
            "the Chinese font package 'weblate-fonts' is missing: reinstall gridbot"
        ) from err
    path = Path(str(base.joinpath(_FOLDER, name)))
    if not path.is_file():
        raise FontMissingError(f"font file {name} not found in {_PACKAGE}")
    return path


@lru_cache(maxsize=2)
def cjk_font_path(bold: bool = False) -> Path:
    """The path of the bundled Simplified Chinese font (regular, or bold)."""
    return _font_file(_BOLD if bold else _REGULAR)


@lru_cache(maxsize=32)
def pil_font(size: int, *, bold: bool = False) -> FreeTypeFont:
    """A Pillow font of ``size`` pixels drawing Chinese and Latin text."""
    from PIL import ImageFont

    return ImageFont.truetype(str(cjk_font_path(bold)), size)


def mpl_font(size: float | None = None, *, bold: bool = False) -> FontProperties:
    """matplotlib font properties naming the bundled font file directly.

    Passing these to each text of a figure (``fontproperties=``) draws Chinese without
    registering anything in matplotlib's global font manager or rc parameters.
    """
    from matplotlib.font_manager import FontProperties

    return FontProperties(fname=str(cjk_font_path(bold)), size=size)


@lru_cache(maxsize=1)
def _cmap() -> frozenset[int]:
    from fontTools.ttLib import TTFont

    font = TTFont(str(cjk_font_path()), lazy=True)
    try:
        return frozenset(font.getBestCmap())
    finally:
        font.close()


def missing_glyphs(text: str) -> str:
    """The characters of ``text`` (other than whitespace) the bundled font has no glyph for."""
    cmap = _cmap()
    return "".join(ch for ch in dict.fromkeys(text) if not ch.isspace() and ord(ch) not in cmap)
