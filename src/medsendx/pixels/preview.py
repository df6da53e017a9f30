"""What the default cleaner blanks, drawn on a copy of the image (``inspect``/``view --boxes``).

The file itself is never changed: its first frame is cleaned in memory and the boxes are
drawn on the displayed image, red for blanked text, green for markers left in place, so a
person can check. On an input file this shows what ``anonymize`` would blank; on an output,
whatever the detector still finds (nothing, for an object that was cleaned).
"""

from __future__ import annotations

import copy

import numpy as np
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset

from medsendx.config import PixelSettings
from medsendx.dicomio import display_image
from medsendx.pixels.cleaner import PixelCleaner

BLANKED, KEPT = (255, 0, 0), (0, 200, 0)


def boxes_image(ds: Dataset, settings: PixelSettings | None = None) -> tuple[np.ndarray, str]:
    """(RGB image of the first frame as displayed, with the boxes drawn; the cleaner's verdict)."""
    shown = display_image(ds, 0)
    work = copy.deepcopy(ds)
    settings = settings or PixelSettings()
    # Search the whole object, as for one whose header puts it at risk.
    work.BurnedInAnnotation = "YES"
    result = PixelCleaner(settings)(work, set())
    image = Image.fromarray(shown).convert("RGB")
    draw = ImageDraw.Draw(image)
    height = shown.shape[0]
    for boxes, colour in ((result.regions, BLANKED), (result.kept, KEPT)):
        for x0, y0, x1, y1 in boxes:
            if y0 < height:  # first frame only
                draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=colour, width=2)
    return np.asarray(image), result.reason
