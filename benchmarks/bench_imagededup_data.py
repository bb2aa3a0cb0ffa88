"""imagededup's own test folder: are its three families of copies found whole, and nothing else?

    python benchmarks/bench_imagededup_data.py [--sdist FILE] [--workdir /tmp/bench-imagededup-data]

The folder is ``tests/data`` of imagededup 0.3.1's source distribution (``--sdist``, else fetched once
from the package index, checked by its SHA-256): 34 images (and 3 pickles of its own tests) in nested
folders, in every format imagededup tests (a 1-bit PBM, a PGM, a PPM, a TIFF, a GIF, an MPO, a JPEG
named ``.svg``, a PNG with an alpha channel, two corrupt JPEGs). Three photos have copies there:
ukbench00120 (the same file in three folders, mirrored, resized to 300x300, rotated, in gray, and
with an alpha channel as ``alpha_channel_image.png``: 11 files), ukbench09380 (the JPEG and its BMP,
PNG, JPEG and ``.svg`` copies: 5) and ukbench09268 (one file in three folders: 3). Every other file
is a photo of its own.

``imgsim duplicates DIR`` (no fit, a fresh cache) and ``imgsim duplicates`` on a fit of the folder (the
default settings) are scored with ``--ground-truth`` (each file to its copies, as imagededup's
``evaluate`` takes it): pair precision and recall, the families found whole (every readable member in
one group, and nothing else in it), groups mixing two photos, the files listed unreadable. Written to
docs/QUALITY.md. Target (issue 32): 3 of 3 families whole.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.bench_copydays import found_both_ways  # noqa: E402
from benchmarks.report import QUALITY_MD, machine, write_section  # noqa: E402

SDIST_URL = ("https://files.pythonhosted.org/packages/0d/d5/"
             "fe83ffe2fc073027e2847618a3ce492e75777ac834a17157b053187af949/imagededup-0.3.1.tar.gz")
SDIST_SHA256 = "74236f7c25b35a71699760b274e1b0bf5d58bc8efd50df2a48886896f71459d8"
FAMILIES = ("ukbench00120", "ukbench09380", "ukbench09268")


def test_data(sdist: Path | None, workdir: Path) -> Path:
    """imagededup's ``tests/data``, extracted into ``workdir`` from ``sdist`` or the index's copy."""
    folder = workdir / "data"
    if folder.is_dir():
        return folder
    if sdist is None:
        import requests

        sdist = workdir / "imagededup-0.3.1.tar.gz"
        workdir.mkdir(parents=True, exist_ok=True)
        sdist.write_bytes(requests.get(SDIST_URL, timeout=120).content)
    if hashlib.sha256(sdist.read_bytes()).hexdigest() != SDIST_SHA256:
        raise SystemExit(f"{sdist}: not imagededup 0.3.1's source distribution (its SHA-256 differs)")
    prefix = "imagededup-0.3.1/tests/data/"
    with tarfile.open(sdist) as archive:
        members = [member for member in archive.getmembers() if member.name.startswith(prefix) and member.isfile()]
        for member in members:
            member.name = member.name[len(prefix):]
        archive.extractall(folder, members=members, filter="data")
    return folder


def family_of(name: str) -> str:
    """The photo a file (its path in the folder) shows: one of FAMILIES, else the file itself (a
    corrupt copy too: nothing of it can be read, by any method)."""
    stem = Path(name).name
    if stem == "alpha_channel_image.png":
        return "ukbench00120"
    if "_corrupt" in stem:
        return name
    return next((family for family in FAMILIES if stem.startswith(family)), name)


def score(found: dict, folder: Path, names: list[str]) -> dict:
    """A run's groups against the families: scores, families whole, groups mixing photos, unreadable files."""
    unreadable = sorted(str(Path(path).relative_to(folder)) for path in found["unreadable"])
    groups = [sorted(str(Path(image["path"]).relative_to(folder)) for image in group["images"])
              for group in found["groups"]]
    readable = [name for name in names if name not in unreadable]
    whole = [family for family in FAMILIES
             if sorted(name for name in readable if family_of(name) == family) in groups]
    return {"scores": found["ground_truth"], "whole": whole, "groups": groups, "unreadable": unreadable,
            "mixed": [group for group in groups if len({family_of(name) for name in group}) > 1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", type=Path, help="imagededup-0.3.1.tar.gz (default: fetched from the index)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-imagededup-data"))
    args = parser.parse_args()
    folder = test_data(args.sdist, args.workdir)
    names = sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())
    truth = {name: [other for other in names if other != name and family_of(other) == family_of(name)]
             for name in names if family_of(name) in FAMILIES}
    print(f"{len(names)} files; fitting ...", flush=True)
    results = {}
    for way, found in found_both_ways(folder, truth, args.workdir).items():
        results[way] = score(found, folder, names)
        print(way, json.dumps(results[way], indent=1), flush=True)
    rows = "\n".join(
        f"| {way} | {len(r['whole'])} of {len(FAMILIES)} ({', '.join(r['whole']) or 'none'}) | "
        f"{r['scores']['precision']:.4f} | {r['scores']['recall']:.4f} | {r['scores']['found_pairs']} | "
        f"{r['scores']['true_pairs']} | {len(r['groups'])} | {len(r['mixed'])} | "
        f"{', '.join(r['unreadable']) or 'none left (the fit skipped and listed them)'} |"
        for way, r in results.items())
    groups = "\n".join(f"- {way}: " + "; ".join(f"{len(group)} files: " + ", ".join(f"`{name}`" for name in group)
                                                 for group in r["groups"]) for way, r in results.items())
    title = "## imagededup's own test folder (`python benchmarks/bench_imagededup_data.py`)"
    write_section("bench_imagededup_data", f"""{title}

Measured on {machine()}. The folder: `tests/data` of imagededup 0.3.1's source
distribution, {len(names)} files (3 of them pickles of its own tests, not images) in nested folders (a 1-bit PBM,
PGM, PPM, TIFF, GIF, MPO, a JPEG named `.svg`, a PNG with an alpha channel, two corrupt JPEGs). Its families of
copies: ukbench00120 (11 files: the photo in three folders, mirrored, resized, rotated, in gray, with an alpha
channel), ukbench09380 (5: BMP, PNG, JPEG and `.svg` copies), ukbench09268 (3; its two corrupt copies, which do not
decode, count as photos of their own); every other file is a photo of its own. `imgsim duplicates --ground-truth`
with its defaults, on the folder with no fit and on a fit of the folder (the default settings). Target (issue 32):
3 of 3 families whole (every readable member in one group, nothing else in it).

| | families whole | pair precision | pair recall | pairs found | true pairs | groups | groups mixing two photos | unreadable |
|---|---|---|---|---|---|---|---|---|
{rows}

The groups:

{groups}
""", QUALITY_MD)


if __name__ == "__main__":
    main()
