"""Found copies scored against a person's own labels: ``imgsim duplicates --ground-truth FILE``.

The file is the map imagededup's ``evaluate`` takes: JSON, each file to the list of its copies
(``{"a.jpg": ["b.jpg"], "b.jpg": ["a.jpg"], "c.jpg": []}``). A file is named by its path relative
to a fitted folder (or to the folder searched), by its absolute path, or by its bare name where
that is unique. Scores are over pairs: two files are a true pair when either lists the other; a
found pair is two members of one group. Only files the map names are scored.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..errors import InputError


@dataclass
class PairScores:
    """Pair precision, recall and F1 of found groups against labelled copies."""

    true_pairs: int
    found_pairs: int  # among the files the labels name
    correct: int
    unknown: list[str]  # files the labels name that are not in the collection (their pairs count as missed)

    @property
    def precision(self) -> float:
        return self.correct / self.found_pairs if self.found_pairs else 1.0

    @property
    def recall(self) -> float:
        return self.correct / self.true_pairs if self.true_pairs else 1.0

    @property
    def f1(self) -> float:
        total = self.precision + self.recall
        return 2 * self.precision * self.recall / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"precision": round(self.precision, 4), "recall": round(self.recall, 4), "f1": round(self.f1, 4),
                "true_pairs": self.true_pairs, "found_pairs": self.found_pairs, "correct": self.correct,
                "not_in_the_collection": self.unknown}

    def line(self) -> str:
        """The scores in one line, as the command prints them."""
        text = (f"against the ground truth: pair precision {self.precision:.4f}, recall {self.recall:.4f}, "
                f"F1 {self.f1:.4f} ({self.correct} of {self.found_pairs} pairs found right, of {self.true_pairs} true)")
        return text + (f"; {len(self.unknown)} labelled files not in the collection" if self.unknown else "")


def read_ground_truth(path: str | os.PathLike) -> dict[str, list[str]]:
    """The labelled copies in ``path``; InputError naming it unless it is a JSON map of names to lists of names."""
    try:
        labels = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InputError(f"{path}: not a JSON file ({str(exc)[:120]})") from None
    if not isinstance(labels, dict) or not all(
            isinstance(copies, list) and all(isinstance(name, str) for name in copies) for copies in labels.values()):
        raise InputError(f"{path}: must be a JSON object of each file to the list of its copies")
    return labels


def score_groups(groups: Iterable[Iterable[str]], labels: dict[str, list[str]], paths: list[str],
                 roots: list[str]) -> PairScores:
    """Score ``groups`` (each the paths of one group's members) against ``labels``; ``paths`` are
    every file of the collection and ``roots`` its folders, to resolve the names the labels use.
    InputError when the labels name no file of the collection (the wrong file, or other names)."""
    resolve = _resolver(paths, roots)
    named = {name for name, copies in labels.items() for name in (name, *copies)}
    unknown = sorted(name for name in named if resolve(name) is None)
    files = {resolve(name) for name in named} - {None}
    if named and not files:
        raise InputError(f"names none of the {len(paths)} files of the collection (name each by its path relative "
                         f"to the fitted folder, its absolute path or its file name)")
    true, missed = set(), 0
    for pair in {frozenset((name, copy)) for name, copies in labels.items() for copy in copies if name != copy}:
        first, second = (resolve(name) for name in pair)
        if first is None or second is None:
            missed += 1  # a file not in the collection: never found
        elif first != second:
            true.add(frozenset((first, second)))
    found = set()
    for group in groups:
        members = sorted(set(group) & files)
        found |= {frozenset((a, b)) for number, a in enumerate(members) for b in members[number + 1:]}
    return PairScores(len(true) + missed, len(found), len(found & true), unknown)


def _resolver(paths: list[str], roots: list[str]):
    """A function from a name in the labels to a collection's path, or None."""
    by_path = {os.path.normpath(path): path for path in paths}
    by_name: dict[str, list[str]] = {}
    for path in paths:
        by_name.setdefault(os.path.basename(path), []).append(path)

    def resolve(name: str):
        if os.path.isabs(name):
            return by_path.get(os.path.normpath(name))
        for root in roots:
            found = by_path.get(os.path.normpath(os.path.join(root, name)))
            if found is not None:
                return found
        candidates = by_name.get(name, [])
        return candidates[0] if len(candidates) == 1 else None

    return resolve
