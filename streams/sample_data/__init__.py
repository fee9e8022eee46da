"""The small datasets that ship with streamrec.

``ONLINE_RETAIL`` is a slice of the UCI Online Retail data in the same shape as the
full folder (``by-day/YYYY-MM-DD.csv.gz``, the same header, source rows copied byte
for byte), so :func:`corpus.datasets.load_dataset` reads it with the same code. It is
the default dataset when the shared data beside the checkout is absent (see
:func:`streams.settings.default_data_dir`, which is why it lives in the bottom
layer). Its README gives the source, the licence and the counts; it is rebuilt
from the full data with (:mod:`corpus.sample`)::

    python -m corpus.sample --source ../shared/data/online-retail
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ONLINE_RETAIL"]

#: The shipped online-retail slice (a dataset folder).
ONLINE_RETAIL = Path(__file__).resolve().parent / "online-retail"
