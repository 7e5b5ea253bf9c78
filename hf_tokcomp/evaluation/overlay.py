"""Picture a selection: the image with the dropped visual tokens dimmed and the kept ones outlined."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw

__all__ = ["overlay_kept", "side_by_side"]


def overlay_kept(
    image: Image.Image, kept: Sequence[int], grid: tuple[int, int], scale: int = 2, order: str = "row_major"
) -> Image.Image:
    """``image`` (resized to the model's input size beforehand) with a ``grid = (rows, cols)`` of visual tokens;
    the tokens whose indices are in ``kept`` stay bright and outlined, the others are dimmed.

    ``order``: how token indices map to cells, ``"row_major"`` (Qwen-VL, LLaVA) or ``"column_major"`` (VILA1.5).
    """
    if order not in ("row_major", "column_major"):
        raise ValueError(f"`order` must be 'row_major' or 'column_major', got {order!r}")
    rows, cols = grid
    bad = [i for i in kept if not 0 <= i < rows * cols]
    if bad:
        raise ValueError(f"`kept` indices must be in [0, {rows * cols}) for a {rows}x{cols} grid, got {bad[:5]}")
    base = image.convert("RGB").resize((image.width * scale, image.height * scale), Image.NEAREST)
    cell_w, cell_h = base.width / cols, base.height / rows
    dim = Image.new("RGB", base.size, (0, 0, 0))
    mask = Image.new("L", base.size, 150)
    pen = ImageDraw.Draw(mask)
    boxes = []
    for index in kept:
        r, c = divmod(index, cols) if order == "row_major" else (index % rows, index // rows)
        box = (round(c * cell_w), round(r * cell_h), round((c + 1) * cell_w) - 1, round((r + 1) * cell_h) - 1)
        pen.rectangle(box, fill=0)
        boxes.append(box)
    out = Image.composite(dim, base, mask)
    outline = ImageDraw.Draw(out)
    for box in boxes:
        outline.rectangle(box, outline=(255, 215, 0), width=1)
    return out


def side_by_side(panels: Sequence[tuple[str, Image.Image]], pad: int = 8) -> Image.Image:
    """Panels in a row, each with its caption above."""
    height = max(p.height for _, p in panels) + 20
    width = sum(p.width for _, p in panels) + pad * (len(panels) + 1)
    out = Image.new("RGB", (width, height + pad), (255, 255, 255))
    pen, x = ImageDraw.Draw(out), pad
    for caption, panel in panels:
        pen.text((x, 4), caption, fill=(0, 0, 0))
        out.paste(panel, (x, 20))
        x += panel.width + pad
    return out
