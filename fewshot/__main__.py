"""``python -m fewshot``: the ``fewshot`` command line (:func:`fewshot.cli.main`)."""

from __future__ import annotations

import sys

from fewshot.cli import main

if __name__ == "__main__":
    sys.exit(main())
