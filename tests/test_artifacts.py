"""Atomic commits and clear errors for missing, partial or foreign artifacts."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import pyarrow as pa

from pipeline.bundle.artifacts import Bundle
from pipeline.bundle.layout import LOCK, LEDGER, REQUIRED_FILES, current_folder
from pipeline.bundle.manifest import FORMAT_VERSION
from pipeline.bundle.writer import ArtifactWriter
from pipeline.errors import ArtifactError
from pipeline.search.searcher import SearchOptions

from helpers import rewrite_catalog


class _RunsCode:
    """Unpickling this calls ``open(marker, "w")``: what a crafted bundle file would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def stage_fit(writer, marker, keep=2):
    """Stage files of the bundle's names (only the manifest is real) and commit them."""
    for name in REQUIRED_FILES:
        (writer.path / name).write_text(marker)
    (writer.path / "manifest.json").write_text(json.dumps({"format_version": FORMAT_VERSION, "marker": marker}))
    return writer.commit(keep=keep)


def test_commit_points_current_at_the_new_bundle_and_keeps_the_newest(tmp_path):
    committed = []
    for marker in ("one", "two", "three"):
        with ArtifactWriter(tmp_path) as writer:
            committed.append(stage_fit(writer, marker))
    first, second, third = committed
    assert current_folder(tmp_path) == third and second.exists() and not first.exists()  # the two newest kept
    assert json.loads((third / "manifest.json").read_text())["marker"] == "three"
    with ArtifactWriter(tmp_path) as writer:
        fourth = stage_fit(writer, "four", keep=1)
    assert [path.name for path in tmp_path.glob("bundle-*")] == [fourth.name]


def test_a_failed_fit_keeps_the_previous_one_and_leaves_no_staging(tmp_path):
    with ArtifactWriter(tmp_path) as writer:
        good = stage_fit(writer, "good")
    with pytest.raises(RuntimeError):
        with ArtifactWriter(tmp_path) as writer:
            (writer.path / "encoder.keras").write_text("half written")
            raise RuntimeError("training blew up")
    assert current_folder(tmp_path) == good
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["CURRENT", LEDGER, LOCK, good.name])


def test_staging_left_by_a_killed_fit_is_cleaned_by_the_next(tmp_path):
    abandoned = tmp_path / ".staging-999999999-abc"  # no such process
    abandoned.mkdir()
    with ArtifactWriter(tmp_path) as writer:
        stage_fit(writer, "x")
    assert not abandoned.exists()


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ArtifactError, match="no fitted artifacts.*: it does not exist"):
        current_folder(tmp_path / "nowhere")
    with pytest.raises(ArtifactError, match="holds no completed fit"):
        current_folder(tmp_path)


def test_partial_and_foreign_artifacts_are_clear_errors(tmp_path):
    with ArtifactWriter(tmp_path) as writer:
        fit_dir = stage_fit(writer, "x")
    os.remove(fit_dir / "index.npz")
    with pytest.raises(ArtifactError, match="incomplete artifacts, missing index.npz"):
        current_folder(tmp_path)
    (fit_dir / "index.npz").write_text("x")
    (fit_dir / "manifest.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(ArtifactError, match="format version 99"):
        current_folder(tmp_path)
    (fit_dir / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="unreadable manifest"):
        current_folder(tmp_path)


def test_a_bundle_round_trips_with_its_index_settings(fitted, tmp_path):
    bundle = Bundle.load(fitted[0])
    bundle.index.nprobe_, bundle.index.expansion = 1, 2
    with ArtifactWriter(tmp_path) as writer:
        bundle.save(writer)
    again = Bundle.load(tmp_path)
    assert (again.index.nprobe_, again.index.expansion) == (1, 2) and again.folder.parent == tmp_path
    assert again.index.nprobe == again.settings.nprobe == "auto"  # the setting as given, beside the tuned count
    assert again.manifest == bundle.manifest and again.catalog == bundle.catalog
    assert np.array_equal(again.embeddings, bundle.embeddings)
    hits, reloaded = bundle.index.search(bundle.embeddings[:7], 5), again.index.search(again.embeddings[:7], 5)
    assert np.array_equal(hits.ids, reloaded.ids) and np.allclose(hits.distances, reloaded.distances)
    assert isinstance(again.index.vectors_, np.memmap)  # searched where it lies on disk, not copied into memory
    in_memory = Bundle.load(tmp_path, memory_map=False)
    assert not isinstance(in_memory.index.vectors_, np.memmap)
    assert np.array_equal(in_memory.index.search(bundle.embeddings[:7], 5).ids, hits.ids)


def test_a_crafted_bundle_file_cannot_run_code(fitted_copy, tmp_path):
    marker = tmp_path / "ran"
    artifacts = fitted_copy
    folder = current_folder(artifacts)
    with np.load(folder / "index.npz") as arrays:
        stored = dict(arrays)
    np.savez(folder / "index.npz", **{**stored, "assignments": np.array([_RunsCode(marker)] * 32, dtype=object)})
    with pytest.raises(ArtifactError, match="index.npz: cannot load the index .*allow_pickle"):
        Bundle.load(artifacts)
    np.save(folder / "embeddings.npy", np.array([_RunsCode(marker)], dtype=object))
    with pytest.raises(ArtifactError, match="embeddings.npy: cannot load the embeddings"):
        Bundle.load(artifacts)
    assert not marker.exists()


def test_a_second_writer_fails_at_once_and_the_first_one_wins(tmp_path):
    with ArtifactWriter(tmp_path) as first:
        with pytest.raises(ArtifactError, match=rf"another fit, add, sync or remove is writing to it \(process {os.getpid()}\)"):
            with ArtifactWriter(tmp_path):
                pass
        committed = stage_fit(first, "first")
    assert current_folder(tmp_path) == committed
    with ArtifactWriter(tmp_path) as again:  # the lock is released with the first writer
        assert stage_fit(again, "again") == current_folder(tmp_path)


def test_a_writer_in_another_process_blocks_this_one(tmp_path):
    import subprocess
    import sys

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pipeline.bundle.writer import ArtifactWriter\n"
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


def _edit_catalog(change):
    """Rewrite a bundle's catalog.arrow as ``change`` makes its table (whatever its columns become)."""
    return lambda folder: rewrite_catalog(folder, change)


def _column(name, values, type=None):
    """A change of a catalog table: column ``name`` replaced by ``values`` (a function of the old column's list), of
    ``type`` (by default the old column's)."""
    return lambda table: table.set_column(table.schema.get_field_index(name), name, pa.array(
        values(table.column(name).to_pylist()), type or table.schema.field(name).type))


def _as_format_7(folder):
    """Rewrite a bundle as format 7 wrote it: its catalog JSON, with the clusters."""
    bundle = Bundle.load_folder(folder)
    (folder / "catalog.json").write_text(json.dumps(bundle.catalog.to_json()))
    os.remove(folder / "catalog.arrow")
    _edit_json("manifest.json", lambda m: {**m, "format_version": 7})(folder)


def _edit_json_catalog(change):
    def corrupt(folder):
        _as_format_7(folder)
        _edit_json("catalog.json", change)(folder)
    return corrupt


def _edit_index(**change):
    def corrupt(folder):
        with np.load(folder / "index.npz") as arrays:
            stored = dict(arrays)
        np.savez(folder / "index.npz", **{**stored, **{k: f(stored[k]) for k, f in change.items()}})
    return corrupt


def _with_nan(array):
    array = np.array(array)
    array[3, 1] = np.nan
    return array


def _edit_probes(folder, **change):
    with np.load(folder / "probes.npz") as arrays:
        stored = dict(arrays)
    np.savez(folder / "probes.npz", **{**stored, **{k: f(stored[k]) for k, f in change.items()}})


def _drop_from_index(folder, name):
    with np.load(folder / "index.npz") as arrays:
        stored = {k: v for k, v in arrays.items() if k != name}
    np.savez(folder / "index.npz", **stored)


def _crafted_export(size=64, dims=None, outputs="descriptor", fill=None):
    """A LiteRT export of a tiny Keras model, re-hashed into the manifest as a tamperer would: uint8 images of
    ``size`` px (None: any) to an output ``outputs`` of ``dims`` values (default: the bundle's), each ``fill``
    (None: computed from the image)."""
    def corrupt(folder):
        import tempfile

        import keras

        width = dims or np.load(folder / "embeddings.npy").shape[1]
        image = keras.Input((size, size, 3), dtype="uint8", name="image")
        pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(image))
        vector = keras.layers.Dense(width, kernel_initializer="ones")(pooled)
        if fill is not None:
            vector = keras.layers.Lambda(lambda v: v * 0.0 + fill)(vector)
        with tempfile.TemporaryDirectory() as scratch:
            keras.Model(image, {outputs: vector}).export(f"{scratch}/m.tflite", format="litert", verbose=False)
            _rehashed(folder, Path(f"{scratch}/m.tflite").read_bytes())
    return corrupt


def _rehashed(folder, data):
    """Write ``data`` as the bundle's export and its SHA-256 into the manifest."""
    import hashlib

    (folder / "encoder.tflite").write_bytes(data)
    _edit_json("manifest.json", lambda m: {**m, "export_sha256": hashlib.sha256(data).hexdigest()})(folder)


def _flip_header(folder):
    data = bytearray((folder / "encoder.tflite").read_bytes())
    for offset in range(4, 28):
        data[offset] ^= 0xFF
    _rehashed(folder, bytes(data))


def _other_fit_export(folder):
    """The export of another fit with the same settings and shapes, re-hashed: only the probes can tell."""
    import shutil

    from helpers import CLASSES, SAMPLE, tiny_config
    from pipeline.fit import fit

    other = folder.parent.parent / "other"
    for name in CLASSES:  # other photos of the same classes, as many as the fit's
        (other / "photos" / name).mkdir(parents=True)
        for path in sorted((SAMPLE / name).glob("*.jpg"))[8:16]:
            shutil.copy2(path, other / "photos" / name / path.name)
    fit(other / "photos", other / "artifacts", tiny_config(seed=7))
    _rehashed(folder, (current_folder(other / "artifacts") / "encoder.tflite").read_bytes())


CORRUPTIONS = {
    "export-random-bytes": (lambda folder: _rehashed(folder, np.random.default_rng(0).bytes(4096)),
                            "encoder.tflite: not a LiteRT model that can be run"),
    "export-header-flipped": (_flip_header, "encoder.tflite: not a LiteRT model that can be run"),
    "export-without-descriptor": (_crafted_export(outputs="features"),
                                  "encoder.tflite: the export has no 'descriptor' output .*features"),
    "export-dynamic-input": (_crafted_export(size=None), r"encoder.tflite: the export takes uint8 input of shape "
                                                         r"\[-1, -1, -1, 3\], not uint8 images"),
    "export-12000-px": (_crafted_export(size=12000), r"shape \[-1, 12000, 12000, 3\], .* up to 1024 px"),
    "export-other-sizes": (_crafted_export(size=96), "the export takes 96 px images to .* the bundle says 64 px"),
    "export-nan": (_crafted_export(fill=float("nan")), "the export gives descriptors that are not finite"),
    "export-of-a-foreign-model": (_crafted_export(), "the encoder is not the one this bundle's images were embedded "
                                                     "with"),
    "export-of-another-fit": (_other_fit_export, "the encoder is not the one this bundle's images were embedded with"),
    "export-over-the-size-limit": (lambda folder: os.truncate(folder / "encoder.tflite", 3 * 2**30),
                                   "export is 3,221,225,472 bytes, over the 536,870,912-byte limit"),
    "probes-missing": (lambda folder: os.remove(folder / "probes.npz"), "incomplete artifacts, missing probes.npz"),
    "probes-not-the-indexed": (lambda folder: _edit_probes(folder, descriptors=lambda d: d[::-1].copy()),
                               "the encoder is not the one|probe images' descriptors are not those indexed"),
    "probes-of-another-shape": (lambda folder: _edit_probes(folder, images=lambda i: i[:, :8]), "corrupt probe images"),
    "manifest-a-list": (lambda folder: (folder / "manifest.json").write_text("[]"), "not a manifest"),
    "manifest-truncated": (lambda folder: _truncate(folder / "manifest.json"), "unreadable manifest"),
    "manifest-without-images": (_edit_json("manifest.json", lambda m: {k: v for k, v in m.items() if k != "images"}),
                                "corrupt manifest, images missing"),
    "manifest-recall-not-numbers": (_edit_json("manifest.json", lambda m: {**m, "recall_at_10": {"x": 1}}),
                                    r"corrupt manifest \(recall_at_10 must be an object of numbers by nprobe\)"),
    "manifest-image-size-huge": (_edit_json("manifest.json", lambda m: {**m, "settings": {**m["settings"],
                                                                                          "image_size": 20000}}),
                                 "corrupt settings .image_size must lie between 1 and 1024, got 20000"),
    "manifest-image-size-not-the-encoders": (_edit_json("manifest.json", lambda m: {
        **m, "settings": {**m["settings"], "image_size": 96}}), "takes 64 px images to .* says 96 px"),
    "manifest-change-without-its-folder": (_edit_json("manifest.json", lambda m: {
        **m, "changes": [{"action": "add", "added": 3}]}), r"corrupt manifest \(changes must be a list of adds"),
    "manifest-export-hash-a-list": (_edit_json("manifest.json", lambda m: {**m, "export_sha256": [1, 2]}),
                                    r"corrupt manifest \(export_sha256 must be a SHA-256 or null\)"),
    "manifest-data-dir-relative": (_edit_json("manifest.json", lambda m: {**m, "data_dir": "photos"}),
                                   r"corrupt manifest \(data_dir must be an absolute path\)"),
    "settings-corrupt": (_edit_json("manifest.json", lambda m: {**m, "settings": {**m["settings"], "image_size": "x"}}),
                         "corrupt settings"),
    "catalog-truncated": (lambda folder: _truncate(folder / "catalog.arrow"), "unreadable catalog"),
    "catalog-not-arrow": (lambda folder: (folder / "catalog.arrow").write_text("{}"), "unreadable catalog"),
    "catalog-hash-text": (_edit_catalog(_column("hash", lambda hashes: [h.hex() for h in hashes], pa.string())),
                          r"corrupt catalog \(its columns are id int64, path large_string, label large_string, "
                          r"hash string"),
    "catalog-label-a-number": (_edit_catalog(_column("label", lambda labels: [7] * len(labels), pa.int64())),
                               r"corrupt catalog \(its columns are .*label int64"),
    "catalog-without-ids": (_edit_catalog(lambda table: table.drop_columns(["id"])), "corrupt catalog"),
    "catalog-id-missing": (_edit_catalog(_column("id", lambda ids: [None] + ids[1:])), r"a row has no id"),
    "catalog-id-twice": (_edit_catalog(_column("id", lambda ids: [ids[1]] + ids[1:])),
                         r"corrupt catalog \(ids must be whole numbers from 0, growing row by row"),
    "catalog-id-negative": (_edit_catalog(_column("id", lambda ids: [-1] + ids[1:])), r"ids must be whole numbers"),
    "catalog-shorter-than-the-index": (_edit_catalog(lambda table: table.slice(0, len(table) - 1)),
                                       "image counts differ"),
    "json-catalog-truncated": (lambda folder: (_as_format_7(folder), _truncate(folder / "catalog.json")),
                               "unreadable catalog"),
    "json-catalog-wrong-shape": (_edit_json_catalog(lambda c: {**c, "paths": 1}), "corrupt catalog"),
    "json-catalog-hash-a-list": (_edit_json_catalog(lambda c: {**c, "hashes": [[1]] + c["hashes"][1:]}),
                                 r"corrupt catalog \(hashes must be SHA-1 digests\)"),
    "json-catalog-label-a-number": (_edit_json_catalog(lambda c: {**c, "labels": [7] + c["labels"][1:]}),
                                    r"corrupt catalog \(labels must be strings or null\)"),
    "json-catalog-cluster-not-whole": (_edit_json_catalog(lambda c: {**c, "clusters": [0.5] + c["clusters"][1:]}),
                                       r"corrupt catalog \(clusters must be whole numbers from 0\)"),
    "json-catalog-clusters-not-the-index": (_edit_json_catalog(lambda c: {**c, "clusters": [9] + c["clusters"][1:]}),
                                            r"corrupt catalog \(its clusters are not the index's\)"),
    "json-catalog-path-a-number": (_edit_json_catalog(lambda c: {**c, "paths": [5] + c["paths"][1:]}),
                                   r"corrupt catalog \(paths must be absolute paths\)"),
    "json-catalog-path-relative": (_edit_json_catalog(lambda c: {**c, "paths": ["hat/x.jpg"] + c["paths"][1:]}),
                                   r"corrupt catalog \(paths must be absolute paths\)"),
    "json-catalog-id-twice": (_edit_json_catalog(lambda c: {**c, "ids": [c["ids"][1]] + c["ids"][1:]}),
                              r"corrupt catalog \(an id is given to two images or out of order\)"),
    "json-catalog-shorter-than-the-index": (_edit_json_catalog(lambda c: {k: v[:-1] for k, v in c.items()}),
                                            "corrupt catalog|image counts differ"),
    "embeddings-truncated": (lambda folder: _truncate(folder / "embeddings.npy"), "cannot load the embeddings"),
    "embeddings-a-pickle": (lambda folder: np.save(folder / "embeddings.npy", np.array([{}], dtype=object)),
                            "cannot load the embeddings"),
    "embeddings-not-finite": (lambda folder: np.save(folder / "embeddings.npy", _with_nan(np.load(folder / "embeddings.npy"))),
                              r"embeddings hold values that are not finite \(NaN or infinity\)"),
    "index-vectors-not-finite": (lambda folder: np.save(folder / "index_vectors.npy",
                                                        _with_nan(np.load(folder / "index_vectors.npy"))),
                                 "cannot load the index .*not finite"),
    "index-metric-unknown": (_edit_index(metric=lambda m: np.array("manhattan")),
                             "cannot load the index .*metric 'manhattan', not one of cosine, euclidean"),
    "index-truncated": (lambda folder: _truncate(folder / "index.npz"), "cannot load the index"),
    "index-shorter-than-the-catalog": (_edit_index(assignments=lambda a: a[:-1]), "cannot load the index .*do not fit"),
    "index-nprobe-zero": (_edit_index(nprobe=lambda n: np.array(0)), "cannot load the index .*out of range"),
    "index-vectors-truncated": (lambda folder: _truncate(folder / "index_vectors.npy"), "cannot load the index"),
    "index-vectors-of-another-shape": (lambda folder: np.save(folder / "index_vectors.npy", np.zeros((3, 2), np.float32)),
                                       "cannot load the index .*do not fit"),
    "index-without-expansion": (lambda folder: _drop_from_index(folder, "expansion"),
                                "cannot load the index"),
    "encoder-truncated": (lambda folder: _truncate(folder / "encoder.keras"), "cannot load the model"),
    "export-truncated": (lambda folder: _truncate(folder / "encoder.tflite"), "export is not the one .*SHA-256"),
    "export-replaced-unhashed": (lambda folder: (folder / "encoder.tflite").write_bytes(b"TFL3" + bytes(100)),
                              "export is not the one .*SHA-256"),
    "export-missing": (lambda folder: os.remove(folder / "encoder.tflite"), "incomplete artifacts, missing encoder.tflite"),
    "current-points-nowhere": (lambda folder: (folder.parent / "CURRENT").write_text("fit-gone\n"), "incomplete artifacts"),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_a_corrupt_bundle_is_one_clear_error(fitted_copy, kind):
    artifacts = fitted_copy
    corrupt, message = CORRUPTIONS[kind]
    corrupt(current_folder(artifacts))
    with pytest.raises(ArtifactError, match=message) as raised:
        Bundle.load(artifacts).encoder("keras" if kind.startswith("encoder") else "litert")
    assert "\n" not in str(raised.value)  # one line


def test_a_catalog_path_is_checked_where_it_is_read(fitted_copy):
    """Opening a catalog reads no path (a large one opens without reading its pages); a path that is
    not absolute is one clear error where one is read, one by one or all at once."""
    corrupt = _edit_catalog(_column("path", lambda paths: ["hat/x.jpg"] + paths[1:]))
    corrupt(current_folder(fitted_copy))
    catalog = Bundle.load(fitted_copy).catalog
    assert catalog.paths[1].startswith("/")
    for read in (lambda: catalog.paths[0], catalog.paths.tolist, lambda: list(catalog.paths)):
        with pytest.raises(ArtifactError, match=r"catalog.arrow: corrupt catalog \(paths must be absolute paths\)"):
            read()


def test_the_catalog_finds_rows_by_id_and_by_content_without_python_rows(fitted_copy):
    bundle = Bundle.load(fitted_copy)
    catalog, ids, hashes = bundle.catalog, bundle.catalog.ids.tolist(), bundle.catalog.hashes.tolist()
    assert [catalog.row_of(image_id) for image_id in ids] == list(range(len(ids)))
    assert catalog.row_of(max(ids) + 1) is None and catalog.row_of(-1) is None
    for row, digest in enumerate(hashes):
        assert catalog.rows_with_hash(digest) == [other for other, same in enumerate(hashes) if same == digest]
    assert catalog.rows_with_hash("0" * 40) == [] and catalog.rows_with_hash("not hex") == []
    fresh = Bundle.load(fitted_copy).catalog  # a few digests at once, as a bundle's probe images are found: no sort
    assert fresh.rows_with_hashes([hashes[5], "0" * 40, "not hex", hashes[0]]) == {
        hashes[5]: catalog.rows_with_hash(hashes[5]), hashes[0]: catalog.rows_with_hash(hashes[0])}
    assert fresh._hash_order is None
    loaded = Bundle.load(fitted_copy)
    loaded.encoder()  # finds its probe images among the indexed ones: a few digests, so nothing sorted
    assert loaded.catalog._hash_order is None
    assert catalog.label_names() == sorted({label for label in catalog.labels if label is not None})
    assert catalog.indexed_paths([catalog.paths[3], "/nowhere.jpg"]) == {catalog.paths[3]}
    kept = catalog.select(np.arange(len(catalog)) % 2 == 0)
    assert kept.ids.tolist() == ids[::2] and kept.hashes.tolist() == hashes[::2]
    assert kept.row_of(ids[2]) == 1 and kept.row_of(ids[1]) is None


def test_a_format_7_bundle_is_read_and_upgraded_to_a_columnar_catalog_without_tensorflow(fitted_copy):
    import subprocess
    import sys

    from helpers import ROOT
    from pipeline.search.searcher import Searcher

    artifacts = fitted_copy
    expected = Searcher(Bundle.load(artifacts)).search_indexed(4, SearchOptions(n=6))
    _as_format_7(current_folder(artifacts))
    old = Bundle.load(artifacts)
    assert old.manifest.format_version == 7 and Searcher(old).search_indexed(4, SearchOptions(n=6)) == expected
    process = subprocess.run([sys.executable, "-c", "import sys, pipeline.cli as cli; cli._exit = lambda code: print("
                              "[m for m in ('tensorflow', 'cv2') if m in sys.modules]); cli.main()", "upgrade",
                              "--artifacts", str(artifacts)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert process.returncode == 0, process.stderr
    assert process.stdout.startswith(f"upgraded the bundle to format {FORMAT_VERSION} (its catalog made columnar): ")
    assert process.stdout.splitlines()[-1] == "[]"  # no TensorFlow, no OpenCV
    upgraded = Bundle.load(artifacts)
    assert upgraded.manifest.format_version == FORMAT_VERSION and (upgraded.folder / "catalog.arrow").is_file()
    assert not (upgraded.folder / "catalog.json").exists() and upgraded.catalog == old.catalog
    assert Searcher(upgraded).search_indexed(4, SearchOptions(n=6)) == expected


def _as_format_3(folder, index):
    """Rewrite a bundle as format 3 wrote it: nprobe in the manifest, not on the index; additions."""
    _as_format_7(folder)  # a JSON catalog
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(format_version=3, nprobe=int(index.nprobe_), clusters=index.nlist,
                    additions=[{"added": 1, "data_dir": manifest["data_dir"]}])
    del manifest["changes"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    for name in ("nprobe", "expansion", "norms"):
        _drop_from_index(folder, name)
    os.remove(folder / "index_vectors.npy")
    os.remove(folder / "encoder.tflite")
    return manifest


def test_a_format_3_bundle_loads_and_answers_as_before(fitted_copy):
    from pipeline.search.searcher import Searcher

    artifacts = fitted_copy
    bundle = Bundle.load(artifacts)
    bundle.index.nprobe_ = 2  # not the default, so that reading it from the manifest is checked
    expected = Searcher(bundle).search_indexed(4, SearchOptions(n=6))
    _as_format_3(bundle.folder, bundle.index)
    old = Bundle.load(artifacts)
    assert (old.index.nprobe_, old.index.expansion) == (2, bundle.settings.query_expansion)
    assert old.manifest.changes == [{"action": "add", "added": 1, "data_dir": bundle.manifest.data_dir}]
    assert Searcher(old, runtime="keras").search_indexed(4, SearchOptions(n=6)) == expected


def test_a_legacy_bundle_is_read_only_when_asked_and_answers_as_before(fitted_copy, caplog):
    import joblib

    from pipeline.search.searcher import Searcher

    artifacts = fitted_copy
    bundle = Bundle.load(artifacts)
    expected = [h.id for h in Searcher(bundle).search_indexed(4, SearchOptions(n=6)).results]
    # the format before 3: a pickled index, format version 2, no backbone setting
    folder = bundle.folder
    manifest = _as_format_3(folder, bundle.index)
    joblib.dump(bundle.index, folder / "index.joblib")
    os.remove(folder / "index.npz")
    manifest["format_version"] = 2
    manifest["settings"].pop("backbone")
    manifest["settings"]["color_weight"] = 0.0  # a fit of then with a colour block could not be read (tested apart)
    (folder / "manifest.json").write_text(json.dumps(manifest))

    with pytest.raises(ArtifactError, match="format version 2, whose index is a pickle .* --allow-pickle"):
        Bundle.load(artifacts)
    legacy = Searcher(Bundle.load(artifacts, allow_pickle=True), runtime="keras")
    assert "unpickling its index (--allow-pickle)" in caplog.text
    assert [h.id for h in legacy.search_indexed(4, SearchOptions(n=6)).results] == expected


def _as_format_5_with_an_encoder_of_then(folder):
    """Rewrite a bundle as format 5 wrote it: no LiteRT export, and an encoder as the Keras of then saved it
    (TensorFlow's area resizing, layer names with a leading underscore)."""
    import keras

    from pipeline.model.runtime import load_keras_model
    from pipeline.model.resize import AreaResize

    _as_format_7(folder)  # a JSON catalog
    encoder = load_keras_model(folder / "encoder.keras")

    def then(layer):
        config = layer.get_config()
        if isinstance(layer, AreaResize):
            return keras.layers.Resizing(layer.size, layer.size, interpolation="area", name=config["name"])
        if isinstance(layer, keras.layers.Conv2D):
            config["name"] = "_" + config["name"].replace(".", "._")
        return layer.__class__.from_config(config)

    old = keras.models.clone_model(encoder, clone_function=then, recursive=True)
    old.set_weights(encoder.get_weights())
    old.save(folder / "encoder.keras")
    os.remove(folder / "encoder.tflite")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["format_version"] = 5
    del manifest["export_sha256"]
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_a_bundle_made_before_the_export_names_the_command_that_adds_it(photos, tmp_path):
    import subprocess
    import sys

    from helpers import ROOT, tiny_config
    from pipeline.fit import fit
    from pipeline.search.searcher import Searcher

    artifacts = tmp_path / "artifacts"
    fit(photos, artifacts, tiny_config(image_size=96))  # above 64 px: the orientation block is area-resized
    query = sorted((photos / "pants").glob("*.jpg"))[3]
    expected = [hit.id for hit in Searcher(Bundle.load(artifacts)).search_file(query, SearchOptions(n=8)).results]
    _as_format_5_with_an_encoder_of_then(current_folder(artifacts))

    old = Bundle.load(artifacts)
    assert not old.exported
    with pytest.raises(ArtifactError, match=f"no LiteRT export; add it with: imgsim upgrade --artifacts {artifacts} "
                                            r"\(or use --runtime keras\)"):
        Searcher(old)
    assert [hit.id for hit in Searcher(old, runtime="keras").search_file(query, SearchOptions(n=8)).results] == expected

    def upgrade():
        return subprocess.run([sys.executable, "-m", "pipeline.cli", "upgrade", "--artifacts", str(artifacts)],
                              capture_output=True, text=True, cwd=ROOT, timeout=300)

    process = upgrade()
    assert process.returncode == 0 and process.stdout.startswith(f"upgraded the bundle to format {FORMAT_VERSION} "), \
        process.stderr
    upgraded = Bundle.load(artifacts)
    assert upgraded.exported and upgraded.manifest.format_version == FORMAT_VERSION
    assert [hit.id for hit in Searcher(upgraded).search_file(query, SearchOptions(n=8)).results] == expected
    assert upgrade().stdout.startswith(f"the bundle is of the current format ({FORMAT_VERSION}) already: ")


def test_a_fit_whose_export_differs_from_its_encoder_fails_and_keeps_the_previous_bundle(fitted_copy, photos, monkeypatch):
    import pipeline.train.export
    from helpers import tiny_config
    from pipeline.fit import fit

    artifacts = fitted_copy
    before = current_folder(artifacts)
    monkeypatch.setattr(pipeline.train.export, "MIN_COSINE", 1.5)  # no export can be that close
    with pytest.raises(ArtifactError, match=r"the LiteRT export differs from the Keras encoder \(cosine 1.0000000 on "
                                            r"one of 32 images, at least 1.5 expected\); nothing was written"):
        fit(photos, artifacts, tiny_config())
    assert current_folder(artifacts) == before and not list(artifacts.glob(".staging-*"))
    Bundle.load(artifacts).encoder()  # the previous bundle loads and runs


def test_a_pointer_left_by_a_killed_writer_is_cleaned_by_the_next(tmp_path):
    (tmp_path / "CURRENT.tmp-999999999").write_text("bundle-half\n")  # no such process
    with ArtifactWriter(tmp_path) as writer:
        stage_fit(writer, "x")
    assert not (tmp_path / "CURRENT.tmp-999999999").exists()


def test_a_commit_reaches_the_disk_before_current_moves(tmp_path, monkeypatch):
    """Every staged file and the bundle's folder are fsynced before CURRENT is replaced, and CURRENT's folder
    after: a power cut cannot leave CURRENT naming files that were never written."""
    events = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda descriptor: events.append(("fsync", os.readlink(f"/proc/self/fd/{descriptor}")))
                        or fsync(descriptor))
    monkeypatch.setattr(os, "replace", lambda source, target: events.append(("replace", str(target)))
                        or replace(source, target))
    with ArtifactWriter(tmp_path) as writer:
        stage_fit(writer, "durable")
    moved = events.index(("replace", str(tmp_path / "CURRENT")))
    synced_before = {Path(path).name for kind, path in events[:moved] if kind == "fsync"}
    assert set(REQUIRED_FILES) <= synced_before and tmp_path.name in synced_before
    assert any("/.staging-" in path for kind, path in events[:moved])  # the files, where they were written
    assert ("fsync", str(tmp_path)) in events[moved + 1 :]


def test_restore_without_an_older_bundle_is_a_clear_error(tmp_path):
    from pipeline.bundle.artifacts import restore

    with ArtifactWriter(tmp_path) as writer:
        only = stage_fit(writer, "only")
    with pytest.raises(ArtifactError, match=f"no older bundle to restore \\(kept: {only.name}\\)"):
        restore(tmp_path)
    with pytest.raises(ArtifactError, match="no bundle bundle-nope to restore"):
        restore(tmp_path, "bundle-nope")


def test_a_bundle_with_no_image_left_answers_without_errors(fitted_copy):
    from fastapi.testclient import TestClient

    from pipeline.collection.changes import remove_images
    from pipeline.collection.duplicates import find_duplicates
    from pipeline.search.searcher import Searcher
    from pipeline.serve.server import create_app

    artifacts = fitted_copy
    bundle = Bundle.load(artifacts)
    query = bundle.catalog.paths[0]
    remove_images([str(image_id) for image_id in bundle.catalog.ids], artifacts)
    empty = Bundle.load(artifacts)
    assert len(empty.catalog) == 0 and find_duplicates(empty, progress=False).groups == []
    searcher = Searcher(empty)
    assert searcher.search_file(query, SearchOptions(n=5)).results == []
    client = TestClient(create_app(searcher))
    assert client.get("/api/stats").json()["images"] == 0
    assert client.get("/api/duplicates").json()["groups"] == []
    with open(query, "rb") as handle:
        assert client.post("/api/search", files={"image": ("q.jpg", handle.read(), "image/jpeg")}).json()["results"] == []
