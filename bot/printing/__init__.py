"""Printed things: QR code pictures and the stairwell sheets (Pillow, with the bundled font)."""
