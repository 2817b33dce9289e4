"""Where the test images are: ``tests/images/``, one folder per category, with a manifest.

``tests/images/MANIFEST.tsv`` gives every file's source and licence, its size and hash, and
what libvips makes of it; the tests that walk the whole corpus read their file list from it.
"""

from __future__ import annotations

from pathlib import Path

IMAGES = Path(__file__).resolve().parent / "images"
MANIFEST = IMAGES / "MANIFEST.tsv"
