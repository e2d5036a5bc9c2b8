"""The one rule that picks a steering cell on val.

Every steered cell ``(layer, strength)`` of a sweep is scored on val; the cell with the best
val accuracy is the one reported on test. Ties go to the smaller ``|strength|`` (the gentler
intervention), then to the lower layer. The steer experiment picks its cell with
``best_cell``; ``eas.report`` ranks the cells of merged runs with ``selection_key``, so a grid
job and a multirun of one-cell jobs select the same cell.

Pure: plain numbers in, plain numbers out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

# Accuracies closer than this are one value: k/n of one n never are (they differ by >= 1/n),
# but sums such as 0.1 + 0.2 and 0.3 are, and must tie rather than win by float noise.
TIE_DECIMALS = 12


def selection_key(accuracy: float, layer: int, strength: float) -> tuple[float, float, int]:
    """Sort key of a cell: the smallest key is the best cell.

    Args:
        accuracy: Val accuracy in [0, 1]; NaN (a cell without a score) ranks last.
        layer: The steered layer.
        strength: The steering strength (any sign).

    Returns:
        ``(-accuracy rounded to TIE_DECIMALS, |strength|, layer)``.
    """
    acc = -math.inf if math.isnan(accuracy) else round(float(accuracy), TIE_DECIMALS)
    return -acc, abs(float(strength)), int(layer)


def best_cell(val: Mapping[tuple[int, float], float]) -> tuple[int, float] | None:
    """The cell to report on test: best val accuracy; ties go to the smaller ``|strength|``,
    then the lower layer.

    Args:
        val: ``(layer, strength) -> val accuracy`` of every cell scored on val.

    Returns:
        The chosen ``(layer, strength)``; ``None`` when ``val`` is empty. Between cells that
        tie on all three (``strength`` ``s`` and ``-s`` at one layer) the first in ``val``'s
        order wins.
    """
    return min(val, key=lambda cell: selection_key(val[cell], *cell), default=None)
