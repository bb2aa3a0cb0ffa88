"""Atomic commits and clear errors for missing, partial or foreign artifacts."""

import json
import os

import numpy as np
import pytest

from pipeline.artifacts import (FORMAT_VERSION, LOCK, REQUIRED_FILES, ArtifactWriter, current_fit,
                                load_embeddings, load_index, save_index)
from pipeline.errors import ArtifactError
from pipeline.index import ClusteredIndex


class _RunsCode:
    """Unpickling this calls ``open(marker, "w")``: what a crafted bundle file would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def stage_fit(writer, marker):
    for name in REQUIRED_FILES[1:]:
        (writer.path / name).write_text(marker)
    return writer.commit({"marker": marker})


def test_commit_points_current_at_the_new_fit_and_drops_the_old(tmp_path):
    with ArtifactWriter(tmp_path) as writer:
        first = stage_fit(writer, "one")
    with ArtifactWriter(tmp_path) as writer:
        second = stage_fit(writer, "two")
    assert current_fit(tmp_path) == second and not first.exists()
    assert json.loads((second / "manifest.json").read_text())["format_version"] == FORMAT_VERSION


def test_a_failed_fit_keeps_the_previous_one_and_leaves_no_staging(tmp_path):
    with ArtifactWriter(tmp_path) as writer:
        good = stage_fit(writer, "good")
    with pytest.raises(RuntimeError):
        with ArtifactWriter(tmp_path) as writer:
            (writer.path / "encoder.keras").write_text("half written")
            raise RuntimeError("training blew up")
    assert current_fit(tmp_path) == good
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["CURRENT", LOCK, good.name])


def test_staging_left_by_a_killed_fit_is_cleaned_by_the_next(tmp_path):
    abandoned = tmp_path / ".staging-999999999-abc"  # no such process
    abandoned.mkdir()
    with ArtifactWriter(tmp_path) as writer:
        stage_fit(writer, "x")
    assert not abandoned.exists()


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ArtifactError, match="no fitted artifacts .it does not exist"):
        current_fit(tmp_path / "nowhere")
    with pytest.raises(ArtifactError, match="holds no completed fit"):
        current_fit(tmp_path)


def test_partial_and_foreign_artifacts_are_clear_errors(tmp_path):
    with ArtifactWriter(tmp_path) as writer:
        fit_dir = stage_fit(writer, "x")
    os.remove(fit_dir / "index.npz")
    with pytest.raises(ArtifactError, match="incomplete artifacts, missing index.npz"):
        current_fit(tmp_path)
    (fit_dir / "index.npz").write_text("x")
    (fit_dir / "manifest.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(ArtifactError, match="format version 99"):
        current_fit(tmp_path)
    (fit_dir / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="unreadable manifest"):
        current_fit(tmp_path)


def test_the_index_round_trips_through_plain_arrays(tmp_path):
    vectors = np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32)
    index = ClusteredIndex("cosine").fit(vectors, vectors[:5])
    save_index(tmp_path, index, vectors)
    loaded = load_index(tmp_path, load_embeddings(tmp_path))
    assert loaded.nlist == index.nlist and np.array_equal(loaded.assignments_, index.assignments_)
    hits, again = index.search(vectors[:7], 5, 2), loaded.search(vectors[:7], 5, 2)
    assert np.array_equal(hits.ids, again.ids) and np.allclose(hits.distances, again.distances)


def test_a_crafted_bundle_file_cannot_run_code(tmp_path):
    marker = tmp_path / "ran"
    vectors = np.zeros((3, 2), np.float32)
    np.savez(tmp_path / "index.npz", metric=np.array("cosine"), centroids=np.ones((1, 2), np.float32),
             assignments=np.array([_RunsCode(marker)] * 3, dtype=object))
    with pytest.raises(ArtifactError, match="index.npz: cannot load the index .*allow_pickle"):
        load_index(tmp_path, vectors)
    np.save(tmp_path / "embeddings.npy", np.array([_RunsCode(marker)], dtype=object))
    with pytest.raises(ArtifactError, match="embeddings.npy: cannot load the embeddings"):
        load_embeddings(tmp_path)
    assert not marker.exists()


def test_an_index_that_does_not_fit_its_embeddings_is_a_clear_error(tmp_path):
    vectors = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
    save_index(tmp_path, ClusteredIndex("cosine").fit(vectors, vectors[:3]), vectors)
    with pytest.raises(ArtifactError, match="index.npz: cannot load the index .*do not fit"):
        load_index(tmp_path, vectors[:15])  # a catalog shorter than the index


def test_a_second_writer_fails_at_once_and_the_first_one_wins(tmp_path):
    with ArtifactWriter(tmp_path) as first:
        with pytest.raises(ArtifactError, match=rf"another fit or add is writing to it \(process {os.getpid()}\)"):
            with ArtifactWriter(tmp_path):
                pass
        committed = stage_fit(first, "first")
    assert current_fit(tmp_path) == committed
    with ArtifactWriter(tmp_path) as again:  # the lock is released with the first writer
        assert stage_fit(again, "again") == current_fit(tmp_path)


def test_a_writer_in_another_process_blocks_this_one(tmp_path):
    import subprocess
    import sys

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pipeline.artifacts import ArtifactWriter\n"
                               f"with ArtifactWriter({str(tmp_path)!r}):\n    print('locked', flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ArtifactError, match=f"process {holder.pid}"):
            ArtifactWriter(tmp_path).__enter__()
    finally:
        holder.kill()
        holder.wait()
    with ArtifactWriter(tmp_path) as writer:  # a killed holder leaves no lock behind
        stage_fit(writer, "after")


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _edit_json(name, change):
    def corrupt(folder):
        path = folder / name
        path.write_text(json.dumps(change(json.loads(path.read_text()))))
    return corrupt


def _shorter_index(folder):
    with np.load(folder / "index.npz") as arrays:
        np.savez(folder / "index.npz", metric=arrays["metric"], centroids=arrays["centroids"],
                 assignments=arrays["assignments"][:-1])


CORRUPTIONS = {
    "manifest-a-list": (lambda folder: (folder / "manifest.json").write_text("[]"), "not a manifest"),
    "manifest-truncated": (lambda folder: _truncate(folder / "manifest.json"), "unreadable manifest"),
    "manifest-without-nprobe": (_edit_json("manifest.json", lambda m: {k: v for k, v in m.items() if k != "nprobe"}),
                                "corrupt manifest, nprobe missing"),
    "settings-corrupt": (_edit_json("manifest.json", lambda m: {**m, "settings": {**m["settings"], "image_size": "x"}}),
                         "corrupt settings"),
    "catalog-truncated": (lambda folder: _truncate(folder / "catalog.json"), "unreadable catalog"),
    "catalog-wrong-shape": (_edit_json("catalog.json", lambda c: {**c, "paths": 1}), "corrupt catalog"),
    "catalog-shorter-than-the-index": (_edit_json("catalog.json", lambda c: {k: v[:-1] for k, v in c.items()}),
                                       "corrupt catalog|image counts differ"),
    "embeddings-truncated": (lambda folder: _truncate(folder / "embeddings.npy"), "cannot load the embeddings"),
    "embeddings-a-pickle": (lambda folder: np.save(folder / "embeddings.npy", np.array([{}], dtype=object)),
                            "cannot load the embeddings"),
    "index-truncated": (lambda folder: _truncate(folder / "index.npz"), "cannot load the index"),
    "index-shorter-than-the-catalog": (_shorter_index, "cannot load the index"),
    "encoder-truncated": (lambda folder: _truncate(folder / "encoder.keras"), "cannot load the model"),
    "current-points-nowhere": (lambda folder: (folder.parent / "CURRENT").write_text("fit-gone\n"), "incomplete artifacts"),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_a_corrupt_bundle_is_one_clear_error(fitted, tmp_path, kind):
    import shutil

    from pipeline.search import Searcher

    artifacts = tmp_path / "artifacts"
    shutil.copytree(fitted[0], artifacts)
    corrupt, message = CORRUPTIONS[kind]
    corrupt(current_fit(artifacts))
    with pytest.raises(ArtifactError, match=message):
        Searcher(artifacts)


def test_a_legacy_bundle_is_read_only_when_asked_and_answers_as_before(fitted, tmp_path, caplog):
    import shutil

    import joblib

    from pipeline.search import Searcher

    artifacts = tmp_path / "artifacts"
    shutil.copytree(fitted[0], artifacts)
    folder = current_fit(artifacts)
    expected = [h.id for h in Searcher(artifacts).search_indexed(4, n=6).results]
    # the previous format: a pickled index, format version 2, no backbone setting
    index = load_index(folder, load_embeddings(folder))
    joblib.dump(index, folder / "index.joblib")
    os.remove(folder / "index.npz")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["format_version"] = 2
    manifest["settings"].pop("backbone")
    (folder / "manifest.json").write_text(json.dumps(manifest))

    with pytest.raises(ArtifactError, match="format version 2, whose index is a pickle .* --allow-pickle"):
        Searcher(artifacts)
    legacy = Searcher(artifacts, allow_pickle=True)
    assert "unpickling its index (--allow-pickle)" in caplog.text
    assert [h.id for h in legacy.search_indexed(4, n=6).results] == expected
