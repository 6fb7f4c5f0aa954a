"""QR code pictures: a code as an image, and a code with a caption below it as a PNG.

Captions are drawn with the bundled Chinese font (:mod:`bot.fonts`), so Chinese lines render
on any machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bot.fonts import pil_font

if TYPE_CHECKING:
    from PIL.Image import Image
    from PIL.ImageDraw import ImageDraw
    from PIL.ImageFont import FreeTypeFont


def qr_image(data: str, box_size: int = 10, border: int = 4) -> Image:
    """The QR code of ``data`` (error correction M) as an RGB image."""
    import qrcode
    from qrcode.constants import ERROR_CORRECT_M

    qr = qrcode.QRCode(error_correction=ERROR_CORRECT_M, box_size=box_size, border=border)
    qr.add_data(data)
    qr.make(fit=True)
    image: Image = qr.make_image(fill_color="black", back_color="white").get_image()
    return image.convert("RGB")


def text_width(draw: ImageDraw, text: str, font: FreeTypeFont) -> int:
    """Width in pixels of ``text`` drawn with ``font``."""
    left, _top, right, _bottom = draw.textbbox((0, 0), text, font=font)
    return int(right - left)


def is_cjk(ch: str) -> bool:
    """Whether a character is a CJK ideograph or full-width punctuation (a line may break
    before it)."""
    return ord(ch) >= 0x2E80


def wrap(text: str, font: FreeTypeFont, max_width: int) -> list[str]:
    """Break ``text`` into lines no wider than ``max_width``: between CJK characters, or at
    spaces between Latin words (a word too long for a line is cut)."""
    lines: list[str] = []
    for paragraph in text.splitlines():
        tokens: list[str] = []
        word = ""
        for ch in paragraph:
            if is_cjk(ch) or ch == " ":
                if word:
                    tokens.append(word)
                    word = ""
                tokens.append(ch)
            else:
                word += ch
        if word:
            tokens.append(word)
        line = ""
        for token in tokens:
            candidate = line + token
            if line and font.getlength(candidate.rstrip()) > max_width:
                lines.append(line.rstrip())
                line = token.lstrip()
            else:
                line = candidate
            while font.getlength(line) > max_width and len(line) > 1:
                cut = len(line) - 1
                while cut > 1 and font.getlength(line[:cut]) > max_width:
                    cut -= 1
                lines.append(line[:cut])
                line = line[cut:]
        if line.strip():
            lines.append(line.rstrip())
    return lines


def qr_png(data: str, path: Path, caption: str | None = None) -> Path:
    """Write a QR code of ``data`` as a PNG, with ``caption`` lines (Chinese or not) below it.

    Returns ``path``.
    """
    from PIL import Image as PILImage
    from PIL import ImageDraw

    img = qr_image(data)
    size = max(18, img.width // 18)
    font = pil_font(size)
    probe = ImageDraw.Draw(img)
    lines = [
        part
        for raw in (caption or "").splitlines()
        if raw.strip()
        for part in wrap(raw.strip(), font, img.width - size)
    ]
    if lines:
        line_h = int(size * 1.35)
        canvas = PILImage.new("RGB", (img.width, img.height + line_h * len(lines) + size), "white")
        canvas.paste(img, (0, 0))
        draw = ImageDraw.Draw(canvas)
        y = img.height - size // 2
        for text in lines:
            x = max(0, (img.width - text_width(probe, text, font)) // 2)
            draw.text((x, y), text, fill="black", font=font)
            y += line_h
        img = canvas
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path
