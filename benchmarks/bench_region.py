"""Search by a region of a photo: objects pasted into unrelated photos, found by their box or by the whole photo.

    python benchmarks/bench_region.py --artifacts DIR [--objects 40] [--seed 0]

The fit in ``--artifacts`` is of a folder of object photos (the sample's clothing, say). Each of
``--objects`` of its indexed photos is pasted, at a third of the width, at a random place into an
unrelated photo (flowers5 and caltech101 of ../shared/data, 600 px square), saved as a JPEG; the
composite is searched three ways: by the box around the object (the region cropped and embedded),
and by the whole composite. Prints how often the source photo comes first (and among the first 5),
the median warm time of a region query against a plain query of the same photo (the same Searcher,
alternating), how often the hottest cell of the composite's heatmap (why it answers its source
photo: :mod:`pipeline.search.explain`) lies inside the object's box, and writes docs/QUALITY.md. Targets
(issue 34): the source first in >= 90% by its box; the hottest cell inside the box in >= 80%; a region
query < 2x a plain query's time.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.devsets import SHARED  # noqa: E402
from benchmarks.report import QUALITY_MD, machine, write_section  # noqa: E402
from pipeline.bundle.artifacts import Bundle  # noqa: E402
from pipeline.search.explain import explain, hottest_cell  # noqa: E402
from pipeline.search.searcher import Searcher, SearchOptions  # noqa: E402

SIDE = 600


def composites(bundle: Bundle, count: int, seed: int):
    """(composite JPEG bytes, box, source row) for ``count`` indexed photos pasted into unrelated photos."""
    rng = np.random.default_rng(seed)
    backgrounds = sorted((SHARED / "flowers5").rglob("*.jpg")) + sorted((SHARED / "caltech101").rglob("*.jpg"))
    for row in rng.choice(len(bundle.catalog), count, replace=False):
        background = Image.open(backgrounds[rng.integers(len(backgrounds))]).convert("RGB").resize((SIDE, SIDE))
        pasted = Image.open(bundle.catalog.paths[row]).convert("RGB")
        width = SIDE // 3
        pasted = pasted.resize((width, min(SIDE - 1, round(width * pasted.height / pasted.width))))
        left, top = int(rng.integers(0, SIDE - pasted.width)), int(rng.integers(0, SIDE - pasted.height + 1))
        background.paste(pasted, (left, top))
        out = io.BytesIO()
        background.save(out, "JPEG", quality=90)
        yield out.getvalue(), (left / SIDE, top / SIDE, pasted.width / SIDE, pasted.height / SIDE), int(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", required=True)
    parser.add_argument("--objects", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    bundle = Bundle.load(args.artifacts)
    searcher = Searcher(bundle)
    options = SearchOptions(n=5)
    ranks = {"box": [], "whole": []}
    region_s, plain_s, explain_s, several_s, added_s, hot = [], [], [], [], [], []
    for data, box, row in composites(bundle, args.objects, args.seed):
        started = time.perf_counter()  # why the composite answers its source: is the composite's hottest cell the object?
        source = searcher.prepared(searcher.indexed_file(bundle.catalog.ids[row]), "source")
        heat = explain(searcher.encoder.encoder, source, [searcher.prepared(data, "composite")])[0].result_heat
        explain_s.append(time.perf_counter() - started)
        x, y = hottest_cell(heat)
        hot.append(box[0] <= x <= box[0] + box[2] and box[1] <= y <= box[1] + box[3])
        more = [bundle.catalog.ids[(row + step) % len(bundle.catalog)] for step in (1, 2)]
        uploads = [(searcher.indexed_file(image_id), "more") for image_id in more]
        started = time.perf_counter()  # the composite with two more photos, uploaded, as one query
        searcher.search_photos([(data, "composite"), *uploads], (), options)
        several_s.append(time.perf_counter() - started)
        started = time.perf_counter()  # the page's "+ like": two results added to the query by their ids
        searcher.search_photos([(data, "composite"), *more], (), options)
        added_s.append(time.perf_counter() - started)
        for way, region in (("box", box), ("whole", None)):
            started = time.perf_counter()
            result = searcher.search_bytes(data, "composite.jpg", options, region)
            (region_s if region else plain_s).append(time.perf_counter() - started)
            ids = [hit.id for hit in result.results]
            ranks[way].append(ids.index(bundle.catalog.ids[row]) + 1 if bundle.catalog.ids[row] in ids else None)
    lines = ["| query | source first | source in the first 5 |", "|---|---|---|"]
    for way, found in ranks.items():
        first = sum(rank == 1 for rank in found) / len(found)
        five = sum(rank is not None for rank in found) / len(found)
        lines.append(f"| {'the box around the object' if way == 'box' else 'the whole photo'} | {first:.0%} | {five:.0%} |")
    ratio = statistics.median(region_s) / statistics.median(plain_s)
    lines.append(f"\nThe hottest cell of the composite's heatmap (why it answers its source photo) inside the object's "
                 f"box: {sum(hot)} of {len(hot)} ({sum(hot) / len(hot):.0%}; the map is {heat.shape[0]} x "
                 f"{heat.shape[1]} cells).")
    lines.append(f"\nWarm time, median: a region query {1000 * statistics.median(region_s):.1f} ms, a plain query of "
                 f"the same photo {1000 * statistics.median(plain_s):.1f} ms ({ratio:.2f}x); an explanation "
                 f"{1000 * statistics.median(explain_s):.1f} ms ({statistics.median(explain_s) / statistics.median(plain_s):.2f}x); "
                 f"the photo and two results added to it by id (the page's \"+ like\") as one query "
                 f"{1000 * statistics.median(added_s):.1f} ms ({statistics.median(added_s) / statistics.median(plain_s):.2f}x); "
                 f"three uploaded photos as one query {1000 * statistics.median(several_s):.1f} ms "
                 f"({statistics.median(several_s) / statistics.median(plain_s):.2f}x: each new photo is one more "
                 "encoding).")
    print("\n".join(lines))
    write_section("bench_region", "## Search by a region of a photo (issue 34)\n\n"
                  f"`python benchmarks/bench_region.py --artifacts DIR --objects {args.objects}` ({machine()}; a "
                  f"default fit of the sample's {len(bundle.catalog)} clothing photos; each of {args.objects} of them "
                  f"pasted at a third of the width into a flowers5 or caltech101 photo, {SIDE} px; the region is "
                  "cropped from the decoded photo and embedded as a photo of its own).\n\n" + "\n".join(lines),
                  QUALITY_MD)


if __name__ == "__main__":
    main()
