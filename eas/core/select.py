"""The rules that pick a steering cell on val.

Every steered cell ``(layer, strength)`` of a sweep is scored on val; the cell with the best
val accuracy is the one reported on test. eas's rule (``selection_rule=eas``): ties go to the
smaller ``|strength|`` (the gentler intervention), then to the lower layer. The steer
experiment picks its cell with ``best_cell``; ``eas.report`` ranks the cells of merged runs
with ``selection_key``, so a grid job and a multirun of one-cell jobs select the same cell.
The PAS reference's rule (``selection_rule=pas_reference``, ``reference_cell`` and
``reference_key``): the first strict maximum with layers tried in descending order and
strengths in the order listed.

Pure: plain numbers in, plain numbers out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

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


def reference_key(accuracy: float, layer: int, strength_rank: int) -> tuple[float, int, int]:
    """Sort key of a cell under the PAS reference's rule: the smallest key is the best cell.

    Args:
        accuracy: Val accuracy in [0, 1]; NaN ranks last.
        layer: The steered layer (higher layers are tried first).
        strength_rank: The strength's place in the order strengths are listed.

    Returns:
        ``(-accuracy rounded to TIE_DECIMALS, -layer, strength_rank)``.
    """
    acc = -math.inf if math.isnan(accuracy) else round(float(accuracy), TIE_DECIMALS)
    return -acc, -int(layer), int(strength_rank)


def reference_cell(
    val: Mapping[tuple[int, float], float], strengths: Sequence[float]
) -> tuple[int, float] | None:
    """The cell the PAS reference reports on test: over layers in descending order and
    ``strengths`` in their listed order, the first cell whose val accuracy is strictly
    higher than every cell before it.

    Args:
        val: ``(layer, strength) -> val accuracy`` of every cell scored on val.
        strengths: The strengths in the order listed (a strength missing from it ranks last).

    Returns:
        The chosen ``(layer, strength)``; ``None`` when ``val`` is empty.
    """
    rank = {float(s): i for i, s in reversed(list(enumerate(strengths)))}
    return min(
        val,
        key=lambda c: reference_key(val[c], c[0], rank.get(float(c[1]), len(rank))),
        default=None,
    )
