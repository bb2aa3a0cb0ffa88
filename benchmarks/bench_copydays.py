"""Copies among dense look-alikes, made the way INRIA Copydays is: scored with ``--ground-truth``.

    python benchmarks/bench_copydays.py [--photos 300] [--copies 100] [--seed 0] [--workdir /tmp/bench-copydays]

The folder: ``--photos`` photos of flowers5 (five species: dozens of daisies, of sunflowers, each a
look-alike of the others) and ``--copies`` copies of some of them, one kind each in turn: a crop to
50-80% of the area, JPEG quality 10-30, a rotation by 5 to 90 degrees, a mirror image, grayscale, a
blur, a contrast change, a caption bar under the photo, a letterbox, a quarter of the size, a
screenshot inside a window. The ground truth (each file to its copies, the map imagededup's
``evaluate`` takes) is written beside the folder; the folder is fitted with the default settings
and ``imgsim duplicates --json --ground-truth`` scores its groups; ``imgsim duplicates DIR`` does
the same with no fit. Prints and writes to docs/QUALITY.md the pair precision, recall and F1, the
recall by kind, and the groups that hold two different photos, both ways. Targets (issue 32):
recall >= 0.97, precision >= 0.99, no group mixing two photos, with and without a fit.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from benchmarks.devsets import SHARED  # noqa: E402
from benchmarks.report import QUALITY_MD, machine, write_section  # noqa: E402
from helpers import near_copy  # noqa: E402

KINDS = ("crop", "jpeg", "rotate", "mirror", "grayscale", "blur", "contrast", "caption_bar", "letterbox", "quarter",
         "screenshot")


def copy_of(image: Image.Image, kind: str, rng: np.random.Generator) -> tuple[Image.Image, int]:
    """A copy of ``kind`` and the JPEG quality to save it at."""
    width, height = image.size
    if kind == "crop":
        share = rng.uniform(0.5, 0.8)
        side_w, side_h = int(width * share ** 0.5), int(height * share ** 0.5)
        left, top = int(rng.integers(0, width - side_w + 1)), int(rng.integers(0, height - side_h + 1))
        return image.crop((left, top, left + side_w, top + side_h)), 90
    if kind == "jpeg":
        return image, int(rng.integers(10, 31))
    if kind == "rotate":
        angle = float(rng.uniform(5, 90)) * (1 if rng.random() < 0.5 else -1)
        return image.rotate(angle, Image.Resampling.BICUBIC, expand=True), 90
    if kind == "contrast":
        return ImageEnhance.Contrast(image).enhance(float(rng.choice([0.5, 1.7]))), 90
    if kind == "caption_bar":
        bar = Image.new("RGB", (width, height + height // 8), (20, 20, 20))
        bar.paste(image, (0, 0))
        ImageDraw.Draw(bar).text((width // 20, height + height // 40), "Spring in the garden, 2026",
                                 fill=(240, 240, 240), font_size=max(10, height // 16))
        return bar, 90
    if kind == "quarter":
        return image.resize((max(1, width // 4), max(1, height // 4)), Image.Resampling.BILINEAR), 90
    if kind == "blur":
        return image.filter(ImageFilter.GaussianBlur(max(2, min(width, height) // 80))), 90
    if kind == "grayscale":
        return ImageOps.grayscale(image).convert("RGB"), 90
    return near_copy(image, kind), 90  # mirror, letterbox, screenshot


# photos of flowers5 that are one photo (looked at: a tulip photo and a collage made from it): true pairs too
SAME_PHOTO = [("tulips/134143359_71fa8dd9a4.jpg", "tulips/133858239_3eaa8a91fd_n.jpg")]


def build(folder: Path, photos: int, copies: int, seed: int) -> tuple[dict[str, list[str]], dict[str, str],
                                                                      dict[str, str], dict[str, str]]:
    """The folder of photos and copies, by relative path: (the ground truth, each copy's kind, each file's
    photo, each copy's original). Every file of one photo (an original, its copies, the set's own copies
    in SAME_PHOTO) lists the others."""
    if folder.exists():
        shutil.rmtree(folder)
    rng = np.random.default_rng(seed)
    species = sorted(path for path in (SHARED / "flowers5").iterdir() if path.is_dir())
    chosen = [path for name in species for path in sorted(name.glob("*.jpg"))[:photos // len(species)]]
    for path in chosen:
        (folder / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, folder / path.parent.name / path.name)
    photo_of = {f"{path.parent.name}/{path.name}": f"{path.parent.name}/{path.name}" for path in chosen}
    for first, second in SAME_PHOTO:
        if first in photo_of and second in photo_of:
            photo_of[second] = first
    kinds, original = {}, {}
    for number, index in enumerate(rng.choice(len(chosen), copies, replace=False)):
        source = chosen[index]
        kind = KINDS[number % len(KINDS)]
        image, quality = copy_of(Image.open(source).convert("RGB"), kind, rng)
        name = f"{source.parent.name}/copy-{number:03d}-{kind}.jpg"
        image.save(folder / name, "JPEG", quality=quality)
        original[name] = f"{source.parent.name}/{source.name}"
        photo_of[name] = photo_of[original[name]]
        kinds[name] = kind
    families: dict[str, list[str]] = {}
    for name, photo in photo_of.items():
        families.setdefault(photo, []).append(name)
    truth = {name: [other for other in families[photo] if other != name] for name, photo in photo_of.items()}
    return truth, kinds, photo_of, original


def score(found: dict, folder: Path, kinds: dict[str, str], photo_of: dict[str, str],
          original: dict[str, str]) -> dict:
    """What a run found, against the ground truth: its scores, recall by kind, mixed groups, copies missed."""
    group_of, mixed = {}, []
    for number, group in enumerate(found["groups"]):
        names = [str(Path(image["path"]).relative_to(folder)) for image in group["images"]]
        group_of.update(dict.fromkeys(names, number))
        if len({photo_of[name] for name in names}) > 1:
            mixed.append(names)
    joined = {name: name in group_of and group_of[name] == group_of.get(original[name]) for name in kinds}
    recall = {kind: float(np.mean([joined[name] for name in kinds if kinds[name] == kind])) for kind in KINDS
              if kind in kinds.values()}
    return {"scores": found["ground_truth"], "by_kind": recall, "mixed": mixed,
            "missed": sorted(name for name in kinds if not joined[name]), "compared": found["compared"],
            "from_shared_features": found["from_shared_features"]}


def found_both_ways(folder: Path, truth: dict[str, list[str]], workdir: Path) -> dict[str, dict]:
    """``imgsim duplicates --json --ground-truth`` (``truth``, written to ``workdir``) on a fit of
    ``folder`` (the default settings) and on the folder with no fit (a fresh cache): each one's JSON."""
    artifacts, truth_file, cache = workdir / "artifacts", workdir / "ground-truth.json", workdir / "cache"
    truth_file.write_text(json.dumps(truth, indent=1))
    shutil.rmtree(artifacts, ignore_errors=True)
    subprocess.run([sys.executable, str(ROOT / "scripts" / "fit.py"), str(folder), "--artifacts", str(artifacts)],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    found = {}
    ways = {"with a fit": ["--artifacts", str(artifacts)], "with no fit": [str(folder), "--cache", str(cache)]}
    for way, where in ways.items():
        shutil.rmtree(cache, ignore_errors=True)
        found[way] = json.loads(subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "duplicates.py"), *where, "--json", "--ground-truth",
             str(truth_file)], check=True, cwd=ROOT, capture_output=True, text=True).stdout)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=300)
    parser.add_argument("--copies", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-copydays"))
    args = parser.parse_args()
    folder = args.workdir / "photos"
    truth, kinds, photo_of, original = build(folder, args.photos, args.copies, args.seed)
    print(f"{len(truth)} images, {len(kinds)} of them copies; fitting ...", flush=True)
    results = {}
    for way, found in found_both_ways(folder, truth, args.workdir).items():
        results[way] = score(found, folder, kinds, photo_of, original)
        print(way, json.dumps(results[way], indent=1), flush=True)
    kinds_seen = list(next(iter(results.values()))["by_kind"])
    rows = "\n".join(
        f"| {way} | {r['scores']['precision']:.4f} | {r['scores']['recall']:.4f} | {r['scores']['f1']:.4f} | "
        f"{r['scores']['found_pairs']} | {r['scores']['true_pairs']} | {r['compared']:,} ({r['from_shared_features']:,}) | "
        f"{len(r['mixed'])} |" for way, r in results.items())
    kind_rows = "\n".join(f"| {way} | " + " | ".join(f"{r['by_kind'][kind]:.2f}" for kind in kinds_seen) + " |"
                           for way, r in results.items())
    missed = "\n".join(f"- {way}: " + (", ".join(f"`{name}`" for name in r["missed"]) or "none")
                        for way, r in results.items())
    write_section("bench_copydays", f"""## Copies among dense look-alikes, Copydays-style (`python benchmarks/bench_copydays.py --photos {args.photos} --copies {args.copies} --seed {args.seed}`)

Measured on {machine()}. {len(truth) - len(kinds)} photos of flowers5 (five species: dozens of look-alike daisies,
dandelions, roses, sunflowers, tulips) and {len(kinds)} copies of as many of them, one kind each in turn (the set's
own copies, a tulip photo and a collage made from it, are a true pair too); `imgsim
duplicates --ground-truth` with its defaults on a fit of the folder (the default settings) and on the folder with no
fit (the ground truth: each file to its copies, as imagededup's `evaluate` takes it). Targets (issue 32): pair recall
>= 0.97, precision >= 0.99, no group mixing two photos, with and without a fit.

| | pair precision | pair recall | F1 | pairs found | true pairs | candidate pairs (from shared features only) | groups mixing two photos |
|---|---|---|---|---|---|---|---|
{rows}

Share of each kind of copy grouped with its original:

| | {' | '.join(kinds_seen)} |
|---|{'---|' * len(kinds_seen)}
{kind_rows}

Missed:

{missed}
""", QUALITY_MD)


if __name__ == "__main__":
    main()
