"""A real fit of real photos, searched by file, bytes and URL."""

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.distance import cdist

from pipeline.bundle.artifacts import Bundle
from pipeline.errors import InputError
from pipeline.search.searcher import SearchOptions


def test_fit_summary_and_manifest(fitted, photos):
    artifacts, summary = fitted
    assert summary.images == 32 and not summary.skipped and summary.epochs_run == 2
    bundle = Bundle.load(artifacts)
    manifest = json.loads((bundle.folder / "manifest.json").read_text())
    assert manifest["images"] == 32 and manifest["settings"]["image_size"] == 64
    assert manifest["settings"]["backbone"] == "efficientnet-lite0"
    assert len(manifest["history"]["loss"]) == 2 and len(manifest["history"]["val_loss"]) == 2
    assert {"tensorflow", "keras", "scikit-learn", "numpy"} <= set(manifest["versions"])
    curve = {int(p): recall for p, recall in manifest["recall_at_10"].items()}
    assert summary.nprobe == min(p for p, recall in curve.items() if recall >= 0.95)  # the smallest that reaches it
    assert manifest["changes"] == []
    assert bundle.index.nprobe_ == summary.nprobe and bundle.index.expansion == 3  # the default setting
    assert sorted(set(bundle.catalog.labels)) == ["dress", "hat", "pants", "shoes"]


@pytest.mark.parametrize("runtime", ["litert", "keras"])
def test_a_query_through_the_saved_encoder_gives_the_stored_embedding_for_the_same_file(searcher, photos, runtime):
    """The fit describes its images from the feature maps it computed for training (float16, the
    backbone run once per image); a query runs the whole saved encoder, on either runtime."""
    from pipeline.data.images import prepare_image, read_file

    paths = sorted(photos.rglob("*.jpg"))
    images = np.stack([prepare_image(read_file(path), str(path), searcher.image_size) for path in paths])
    vectors = searcher.bundle.encoder(runtime).encode(images)
    stored = np.asarray(searcher.bundle.embeddings)[[searcher.catalog.paths.index(str(path)) for path in paths]]
    cosine = np.sum(vectors * stored, axis=1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(stored, axis=1)
    assert cosine.min() > 0.99999
    np.testing.assert_allclose(vectors, stored, atol=1e-4)


def test_an_indexed_image_finds_itself_first_at_distance_zero(searcher, photos):
    query = sorted((photos / "hat").glob("*.jpg"))[2]
    result = searcher.search_file(query, SearchOptions(n=5, expansion=0))
    assert len(result.results) == 5 and result.expansion == 0
    first = result.results[0]
    assert first.path == str(query) and first.same_image and first.distance < 1e-5
    distances = [hit.distance for hit in result.results]
    assert distances == sorted(distances) and [hit.rank for hit in result.results] == [1, 2, 3, 4, 5]
    assert first.cluster == result.clusters[0]  # the query's own cluster is probed first


def test_query_expansion_ranks_by_the_expanded_query_keeping_the_copy_and_the_nearest_first(searcher, photos):
    embeddings = np.load(searcher.bundle.folder / "embeddings.npy").astype(np.float64)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    query = sorted((photos / "pants").glob("*.jpg"))[1]
    row = searcher.catalog.paths.index(str(query))
    result = searcher.search_file(query, SearchOptions(n=8, nprobe="all"))
    by_distance = [i for i in np.argsort(cdist(unit[row : row + 1], unit, "cosine")[0], kind="stable") if i != row]
    expanded = unit[row] + unit[by_distance[:3]].sum(axis=0)  # the query and its 3 nearest others
    by_expanded = [i for i in np.argsort(cdist(expanded[None], unit, "cosine")[0], kind="stable")
                   if i not in (row, by_distance[0])]
    assert result.expansion == 3 and result.results[0].id == row and result.results[0].same_image
    assert result.results[1].id == by_distance[0]  # the nearest to the query itself keeps the first place after it
    assert [hit.id for hit in result.results[2:]] == by_expanded[:6]
    ids = [h.id for h in result.results]
    to_query = cdist(unit[row : row + 1], unit[ids], "cosine")[0]
    expected = cdist(expanded[None], unit[ids], "cosine")[0]
    expected[:2] = 0.0, to_query[1]  # the copy at 0, the nearest at its distance to the query: what each was ranked by
    np.testing.assert_allclose([hit.distance for hit in result.results], expected, atol=1e-4)
    assert [hit.distance for hit in result.results[2:]] == sorted(hit.distance for hit in result.results[2:])
    assert [hit.ranked_by for hit in result.results] == ["query", "query"] + ["expanded query"] * 6
    scores = [hit.score for hit in result.results]  # one number the results are in the order of (issue 31)
    assert scores == sorted(scores) and scores[0] == 0.0 and scores[2:] == [hit.distance for hit in result.results[2:]]
    assert scores[1] == min(result.results[1].distance, result.results[2].distance)
    np.testing.assert_allclose([hit.query_distance for hit in result.results], to_query, atol=1e-4)
    alone = [h.id for h in searcher.search_file(query, SearchOptions(n=8, nprobe="all", exclude_self=True)).results]
    assert alone == [by_distance[0]] + by_expanded[:7]


def test_exclude_self_drops_the_query_and_still_returns_n(searcher, photos):
    query = sorted((photos / "shoes").glob("*.jpg"))[0]
    result = searcher.search_file(query, SearchOptions(n=5, exclude_self=True))
    assert len(result.results) == 5 and not any(hit.same_image for hit in result.results)
    assert str(query) not in [hit.path for hit in result.results]


def test_url_query_gives_the_same_result_as_the_file(searcher, photos, http_root, http_url):
    query = sorted((photos / "dress").glob("*.jpg"))[1]
    shutil.copy(query, http_root / "dress.jpg")
    by_file = searcher.search_file(query, SearchOptions(n=8))
    by_url = searcher.search_url(f"{http_url}/dress.jpg", SearchOptions(n=8))
    assert [h.path for h in by_url.results] == [h.path for h in by_file.results]
    np.testing.assert_allclose([h.distance for h in by_url.results], [h.distance for h in by_file.results], atol=1e-6)
    assert by_url.query == f"{http_url}/dress.jpg" and by_url.results[0].same_image


def test_nprobe_all_equals_brute_force_over_the_stored_embeddings(searcher, photos):
    embeddings = np.load(searcher.bundle.folder / "embeddings.npy")
    query = sorted((photos / "pants").glob("*.jpg"))[3]
    result = searcher.search_file(query, SearchOptions(n=10, nprobe="all", expansion=0))
    assert result.nprobe == searcher.index.nlist
    row = searcher.catalog.paths.index(str(query))
    exact = cdist(embeddings[row : row + 1].astype(np.float64), embeddings.astype(np.float64), "cosine")[0]
    expected = np.argsort(exact, kind="stable")[:10]
    np.testing.assert_allclose([h.distance for h in result.results], exact[expected], atol=1e-4)
    assert {h.path for h in result.results[1:]} <= {searcher.catalog.paths[i] for i in np.argsort(exact)[:11]}


def test_grayscale_and_rgba_queries_find_their_source_first(searcher, photos):
    source = sorted((photos / "hat").glob("*.jpg"))[0]
    photo = Image.open(source)
    for mode, fmt in (("L", "PNG"), ("RGBA", "PNG"), ("L", "JPEG")):
        buffer = io.BytesIO()
        photo.convert(mode).save(buffer, fmt)
        result = searcher.search_bytes(buffer.getvalue(), f"query.{mode}.{fmt}", SearchOptions(n=3))
        assert len(result.results) == 3 and not result.results[0].same_image  # other bytes than the indexed file
        assert result.results[0].path == str(source), (mode, fmt)


def test_concurrent_searches_match_sequential_ones(searcher, photos):
    from concurrent.futures import ThreadPoolExecutor

    queries = sorted(photos.rglob("*.jpg"))[:12]
    expected = [[h.id for h in searcher.search_file(q, SearchOptions(n=5, nprobe=2)).results] for q in queries]
    with ThreadPoolExecutor(8) as pool:
        for _ in range(3):
            found = list(pool.map(lambda q: [h.id for h in searcher.search_file(q, SearchOptions(n=5, nprobe=2)).results], queries))
            assert found == expected


def test_batched_encoding_gives_the_same_vectors_in_fewer_calls(searcher, photos, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.data.images import prepare_image, read_file
    from pipeline.model.runtime import BatchingEncoder

    images = [prepare_image(read_file(p), str(p), searcher.image_size) for p in sorted(photos.rglob("*.jpg"))[:12]]
    encoder = searcher.bundle.encoder()
    alone = [BatchingEncoder(encoder, window_ms=0).embed(image) for image in images]
    batch_sizes, original = [], encoder.encode
    monkeypatch.setattr(encoder, "encode", lambda batch: batch_sizes.append(len(batch)) or original(batch))
    batching = BatchingEncoder(encoder, window_ms=200)
    with ThreadPoolExecutor(12) as pool:
        together = list(pool.map(batching.embed, images))
    np.testing.assert_allclose(together, alone, atol=1e-5)
    warm_up, served = batch_sizes[:5], batch_sizes[5:]  # first, one call for each batch shape: 1, 2, 4, 8, 16
    assert sorted(warm_up) == [1, 2, 4, 8, 16]
    assert max(served) > 1 and sum(served) < 2 * len(images)  # fewer calls than images, little padding
    assert all(size & (size - 1) == 0 for size in served)  # padded to powers of two


def test_a_searcher_follows_its_folder_to_a_newer_bundle_and_to_a_new_fit(fitted, photos, fitted_copy):
    from helpers import tiny_config
    from pipeline.collection.changes import remove_images
    from pipeline.fit import fit
    from pipeline.search.searcher import Searcher

    artifacts = fitted_copy
    searcher = Searcher(Bundle.load(artifacts))
    encoder = searcher.encoder
    assert not searcher.refresh()  # nothing committed since
    removed = searcher.catalog.paths[5]
    remove_images([removed], artifacts)  # another writer: imgsim remove, say
    assert searcher.refresh() and len(searcher.catalog) == 31 and searcher.encoder is encoder  # the same fit's
    found = searcher.search_file(removed, SearchOptions(n=31, nprobe="all"))
    assert removed not in [hit.path for hit in found.results] and not any(hit.same_image for hit in found.results)

    fit(photos, artifacts, tiny_config(image_size=48, latent_dim=8))  # a new fit: another encoder, other settings
    assert searcher.refresh() and searcher.encoder is not encoder and searcher.image_size == 48
    result = searcher.search_file(removed, SearchOptions(n=3))
    assert result.results[0].path == removed and result.results[0].same_image  # indexed again by the new fit
    assert searcher.bundle.embeddings.shape[1] != Bundle.load(fitted[0]).embeddings.shape[1]


def test_queries_running_while_bundles_are_swapped_each_read_one_bundle(fitted_copy, photos):
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.collection.changes import remove_images
    from pipeline.search.searcher import Searcher

    artifacts = fitted_copy
    full = Bundle.load(artifacts)
    searcher = Searcher(full)
    remove_images(full.catalog.paths[:16], artifacts)
    half = Bundle.load(artifacts)  # 16 images, which keep their ids, 16 to 31
    queries = sorted(photos.rglob("*.jpg"))[:8]

    def search(query):
        result = searcher.search_file(query, SearchOptions(n=20, nprobe="all"))
        paths = [hit.path for hit in result.results]
        assert len(paths) in (16, 20) and set(paths) <= set(full.catalog.paths)
        if len(paths) == 16:  # the half bundle: its own paths, under its own ids
            assert [half.catalog.paths[half.catalog.row_of(hit.id)] for hit in result.results] == paths
        return len(paths)

    with ThreadPoolExecutor(4) as pool:
        running = [pool.submit(search, query) for query in queries * 6]
        for number in range(40):
            searcher.use(half if number % 2 else full)
        sizes = {future.result() for future in running}  # no error in any query
    assert sizes <= {16, 20}


def test_a_batching_encoder_let_go_ends_its_thread(searcher, photos):
    import gc
    import threading

    from pipeline.data.images import prepare_image, read_file
    from pipeline.model.runtime import BatchingEncoder

    before = {thread for thread in threading.enumerate() if thread.name == "encoder-batches"}
    batching = BatchingEncoder(searcher.bundle.encoder(), window_ms=1)
    path = sorted(photos.rglob("*.jpg"))[0]
    assert batching.embed(prepare_image(read_file(path), str(path), searcher.image_size)).shape == (
        searcher.bundle.embeddings.shape[1],)
    (thread,) = {thread for thread in threading.enumerate() if thread.name == "encoder-batches"} - before
    del batching
    gc.collect()
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_search_options_are_checked_once_when_made():
    import dataclasses

    from pipeline.errors import InputError

    for bad, message in ((dict(n=0), "^n must"), (dict(n=2.5), "^n must"), (dict(nprobe=0), "^nprobe must"),
                         (dict(nprobe="auto"), "^nprobe must"), (dict(expansion=-1), "^expansion must"),
                         (dict(max_distance=float("nan")), "^max_distance must")):
        with pytest.raises(InputError, match=message):
            SearchOptions(**bad)
    with pytest.raises(TypeError):
        SearchOptions(5)  # keyword-only
    with pytest.raises(dataclasses.FrozenInstanceError):
        SearchOptions().n = 3
    assert SearchOptions.parse("7", "auto", "") == SearchOptions(n=7)
    assert SearchOptions.parse(None, "all", "0.25") == SearchOptions(nprobe="all", max_distance=0.25)
    assert SearchOptions.parse("", "12") == SearchOptions(nprobe=12)
    for fields, message in (((" 7",), "^n must be a whole number"), (("101", None, None, 100), "^n must lie between"),
                            ((None, "-1"), "^nprobe must"), ((None, "１"), "^nprobe must"),
                            ((None, None, "inf"), "^max_distance must")):
        with pytest.raises(InputError, match=message):
            SearchOptions.parse(*fields)


def test_several_photos_search_as_one_query_and_unlike_ones_count_against(searcher, photos):
    """Issue 34 (several photos): the mean of the photos' unit descriptors, less half the unlike ones'; the JSON says
    how the query was made; copies of any of the photos are the query's own."""
    from pipeline.search.searcher import combined_query

    catalog, embeddings = searcher.catalog, np.asarray(searcher.bundle.embeddings)
    pants = sorted((photos / "pants").glob("*.jpg"))[:3]
    shoe = sorted((photos / "shoes").glob("*.jpg"))[0]
    rows = [catalog.paths.index(str(path)) for path in pants]
    result = searcher.search_photos([(path.read_bytes(), str(path)) for path in pants], (),
                                    SearchOptions(n=8, nprobe="all"))
    assert result.combined == "the mean of 3 photos' unit descriptors"
    assert sorted(hit.id for hit in result.results[:3]) == sorted(catalog.ids[row] for row in rows)
    assert all(hit.same_image for hit in result.results[:3]) and not any(hit.same_image for hit in result.results[3:])
    index = searcher.index  # the stored descriptors combined, the photos left out of the expansion and the results
    by_vector = index.search(combined_query(embeddings[rows], embeddings[:0])[None], 8, "all", None, np.array([rows]))
    assert [hit.id for hit in result.results[3:]] == [catalog.ids[row] for row in by_vector.ids[0] if row not in rows][:5]
    assert sum(hit.label == "pants" for hit in result.results[3:]) >= 3
    alone = searcher.search_photos([(pants[0].read_bytes(), str(pants[0]))], [(shoe.read_bytes(), str(shoe))],
                                   SearchOptions(n=8, nprobe="all", exclude_self=True))
    assert alone.combined == "the photo's unit descriptor, less 0.5 times the mean of 1 unlike photos'"
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    expected = unit[rows[0]] - 0.5 * unit[catalog.paths.index(str(shoe))]
    np.testing.assert_allclose(combined_query(embeddings[rows[:1]], embeddings[[catalog.paths.index(str(shoe))]]),
                               expected / np.linalg.norm(expected), atol=1e-5)
    with pytest.raises(InputError, match="at most 8 photos a query, got 9"):
        searcher.search_photos([(pants[0].read_bytes(), "p")] * 9)


def test_a_region_of_a_photo_finds_what_is_in_it(searcher, photos):
    """Issue 34 (region): an indexed photo pasted at a third of the width into another photo is found first by its
    box; the box is checked and said in the answer."""
    from helpers import TEST_DATA
    from pipeline.search.searcher import parse_box

    found = 0
    sources = [sorted((photos / name).glob("*.jpg"))[2] for name in ("dress", "hat", "pants", "shoes")]
    background = Image.open(TEST_DATA / "photos" / "flowers5" / "roses" / "3109712111_75cea2dee6.jpg").convert("RGB")
    background = background.resize((600, 600))
    for number, source in enumerate(sources):
        pasted = Image.open(source).convert("RGB")
        pasted = pasted.resize((200, round(200 * pasted.height / pasted.width)))
        left, top = 50 + 100 * number, 120
        composite = background.copy()
        composite.paste(pasted, (left, top))
        out = io.BytesIO()
        composite.save(out, "JPEG", quality=92)
        box = (left / 600, top / 600, pasted.width / 600, pasted.height / 600)
        result = searcher.search_bytes(out.getvalue(), "composite.jpg", SearchOptions(n=3, nprobe="all"), box)
        assert result.box == box and not any(hit.same_image for hit in result.results)
        found += result.results[0].path == str(source)
    assert found >= 3
    assert parse_box("0.1, 0.2,0.5,0.5") == (0.1, 0.2, 0.5, 0.5)
    for bad in ("0.5,0.5,0.6,0.1", "1,0,0.1,0.1", "0,0,0,0.5", "a,b,c,d", "0.1,0.2,0.3"):
        with pytest.raises(InputError, match="box"):
            parse_box(bad)


def test_why_a_result_matched_is_a_heatmap_over_each_photo(searcher, photos, tmp_path):
    """Issue 34 (why similar): heatmaps from the backbone's feature map of each photo; predict --explain writes one
    PNG a result."""
    import subprocess
    import sys

    from helpers import ROOT

    query_path = sorted((photos / "hat").glob("*.jpg"))[1]
    query = searcher.prepared(query_path.read_bytes(), str(query_path))
    result = searcher.search_bytes(query_path.read_bytes(), str(query_path), SearchOptions(n=2))
    explanation, = searcher.explain(query, [result.results[1].id])
    side = searcher.bundle.settings.image_size // 32
    assert explanation.query_heat.shape == explanation.result_heat.shape == (side, side)
    assert explanation.query_heat.min() == 0 and explanation.query_heat.max() == 1
    process = subprocess.run([sys.executable, "-m", "pipeline.cli", "predict", "--file", str(query_path), "-n", "2",
                              "--explain", str(tmp_path / "why"), "--artifacts", str(searcher.bundle.folder.parent)],
                             capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert process.returncode == 0, process.stderr
    written = sorted(path.name for path in (tmp_path / "why").iterdir())
    assert written == [f"{hit.rank:02d}-{hit.id}.png" for hit in result.results]
    assert all((tmp_path / "why" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in written)
    assert f"explained: 2 results in {tmp_path / 'why'}" in process.stdout


def test_predict_takes_several_photos_unlike_ones_and_a_region_and_draws_them(searcher, photos, tmp_path):
    """Issue 34 on the command line: --file repeated and --unlike make one query, --box a region; --plot shows every
    query photo (the region outlined) before the results; --box with several photos is one clear error."""
    import json
    import subprocess
    import sys

    from PIL import Image

    from helpers import ROOT

    pants = [str(path) for path in sorted((photos / "pants").glob("*.jpg"))[:2]]
    shoe = str(sorted((photos / "shoes").glob("*.jpg"))[0])
    artifacts = str(searcher.bundle.folder.parent)

    def predict(*flags: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pipeline.cli", "predict", "-n", "3", "--artifacts", artifacts,
                               *flags], capture_output=True, text=True, cwd=ROOT, timeout=300)

    several = predict("--file", pants[0], "--file", pants[1], "--unlike", shoe, "--json", "--plot",
                      str(tmp_path / "several.png"))
    assert several.returncode == 0, several.stderr
    answer = json.loads(several.stdout)
    assert answer["query"] == f"{pants[0]} + {pants[1]} - {shoe}" and len(answer["results"]) == 3
    assert answer["combined"] == "the mean of 2 photos' unit descriptors, less 0.5 times the mean of 1 unlike photos'"
    assert Image.open(tmp_path / "several.png").size == (1440, 270)  # three query panels, then three results
    region = predict("--file", pants[0], "--box", "0.1,0.2,0.5,0.6", "--plot", str(tmp_path / "region.png"))
    assert region.returncode == 0, region.stderr
    assert "by the region x 0.100, y 0.200, width 0.500, height 0.600 of the query photo" in region.stdout
    drawn = np.asarray(Image.open(tmp_path / "region.png").convert("RGB")).astype(int)
    outline = (drawn[..., 0] > 230) & (drawn[..., 1] > 180) & (drawn[..., 1] < 225) & (drawn[..., 2] < 60)
    assert outline[:, :240].sum() > 200 and outline[:, 240:].sum() == 0  # the box, on the query's panel only
    refused = predict("--file", pants[0], "--file", pants[1], "--box", "0,0,0.5,0.5")
    assert refused.returncode != 0 and refused.stderr.strip().count("\n") == 0
    assert "--box and --explain are about one photo" in refused.stderr
