"""Why a result matched its query: where in each of the two photos the other one is seen.

For a query photo and a result, each position of one photo's backbone feature map (7 x 7 at 224 px)
is compared (cosine) with the other photo's feature map averaged over positions: a position that
shows what the other photo shows as a whole lights up. The two heatmaps are drawn over the photos
side by side (:func:`pipeline.report.plots.explain_png`). The feature map is an output of the fitted
encoder's export, so explaining needs no other model; a fit from pixels has none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import InputError
from ..model.runtime import FEATURE_MAP

_BATCH = 16  # results encoded in one call


@dataclass
class Explanation:
    """The two photos as the encoder saw them (uint8, size x size x 3) and a heatmap over each, in
    [0, 1]: how much each position of one looks like the other photo as a whole."""

    query: np.ndarray
    result: np.ndarray
    query_heat: np.ndarray  # (rows, columns) of the feature map
    result_heat: np.ndarray


def explain(encoder, query: np.ndarray, results: Sequence[np.ndarray]) -> list[Explanation]:
    """The :class:`Explanation` of each of ``results`` (images) as an answer to ``query`` (an
    image), all prepared for ``encoder`` (:func:`pipeline.data.images.prepare_image`); the query is
    encoded once. InputError for an encoder without a feature map (a fit from pixels, or one made
    before it was exported)."""
    explanations, query_map = [], None
    for start in range(0, len(results), _BATCH):
        chunk = list(results[start:start + _BATCH])
        maps = encoder.encode_outputs(np.stack(chunk if query_map is not None else [query, *chunk])).get(FEATURE_MAP)
        if maps is None:
            raise InputError("this fit's encoder has no backbone feature map to explain a match with (a fit from "
                             "pixels, or one made before explanations): fit again over a backbone")
        if query_map is None:
            query_map, maps = maps[0], maps[1:]
        explanations += [Explanation(query, result, _heat(query_map, result_map), _heat(result_map, query_map))
                         for result, result_map in zip(chunk, maps)]
    return explanations


def _heat(positions: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Cosine of each position's feature vector with the mean of ``other``'s, scaled to [0, 1]."""
    pooled = other.reshape(-1, other.shape[-1]).mean(axis=0)
    norms = np.linalg.norm(positions, axis=-1) * np.linalg.norm(pooled)
    cosine = positions @ pooled / np.maximum(norms, 1e-12)
    low, high = cosine.min(), cosine.max()
    return (cosine - low) / (high - low) if high > low else np.zeros_like(cosine)


def hottest_cell(heat: np.ndarray) -> tuple[float, float]:
    """The centre of the hottest cell of a heatmap, as fractions (x, y) of the photo's width and height."""
    row, column = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return (column + 0.5) / heat.shape[1], (row + 0.5) / heat.shape[0]
