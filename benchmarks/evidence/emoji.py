"""Real image-text pairs that install offline: Noto Color Emoji glyphs and their Unicode names.

Debian's `fonts-noto-color-emoji` holds one bitmap per code point (136 x 128 at size 109, the
only size the font has); `unicodedata.name` gives each a name ("GRINNING FACE WITH SMILING
EYES"). Of the named code points in U+1F300-U+1FAFF about 1,160 render as pictures: over a
thousand concepts for pretraining and held-out tests.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT_SIZE = 109  # the bitmap strike of the font
FONT_PATHS = ("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",)
BLOCK = range(0x1F300, 0x1FB00)  # Misc Symbols and Pictographs .. Symbols and Pictographs Ext-A


def font_path() -> Path:
    for path in (os.environ.get("GRAYTUNE_EMOJI_FONT"), *FONT_PATHS):
        if path and Path(path).is_file():
            return Path(path)
    raise FileNotFoundError(
        "the emoji font is missing: apt-get install fonts-noto-color-emoji "
        "(or set GRAYTUNE_EMOJI_FONT to NotoColorEmoji.ttf)"
    )


def caption_name(unicode_name: str) -> str:
    """'GRINNING FACE WITH SMILING EYES' -> 'grinning face with smiling eyes'."""
    return unicode_name.lower().replace("-", " ")


def render_emoji(size: int) -> tuple[np.ndarray, list[str]]:
    """Every glyph of BLOCK that renders as a picture, on white.

    -> images (N, size, size, 3) uint8, names [N] (lower case), in code point order.
    """
    font = ImageFont.truetype(str(font_path()), FONT_SIZE)
    images, names = [], []
    for code in BLOCK:
        char = chr(code)
        name = unicodedata.name(char, None)
        if name is None:
            continue
        glyph = Image.new("RGBA", (160, 160), (0, 0, 0, 0))
        ImageDraw.Draw(glyph).text((0, 0), char, font=font, embedded_color=True)
        box = glyph.getbbox()
        if box is None:  # no bitmap for this code point
            continue
        glyph = glyph.crop(box)
        side = max(glyph.size)
        square = Image.new("RGBA", (side, side), (255, 255, 255, 255))
        square.alpha_composite(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
        margin = round(side * 0.1)  # the glyph fills 80% of the frame
        framed = Image.new("RGBA", (side + 2 * margin,) * 2, (255, 255, 255, 255))
        framed.alpha_composite(square, (margin, margin))
        images.append(np.asarray(framed.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)))
        names.append(caption_name(name))
    return np.stack(images), names
