"""The routed index against brute-force exact search, and the indexing choices made at fit time."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from pipeline.index.cluster import build_index, fit_kmeans
from helpers import tiny_config
from pipeline.index.clustered import ClusteredIndex, prepare_vectors, recall_at_k, recall_curve, smallest_nprobe


def gaussian_mixture(n=3000, dim=16, centers=30, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 4, (centers, dim))
    return (means[rng.integers(0, centers, n)] + rng.normal(0, 1.5, (n, dim))).astype(np.float32)


def build(vectors, metric, nlist, seed=0):
    return ClusteredIndex(metric).fit(vectors, fit_kmeans(prepare_vectors(vectors, metric), nlist, seed))


@pytest.mark.parametrize("metric, scipy_metric", [("cosine", "cosine"), ("euclidean", "euclidean")])
def test_probing_every_cluster_equals_brute_force(metric, scipy_metric):
    vectors = gaussian_mixture()
    queries = gaussian_mixture(n=50, seed=1)
    index = build(vectors, metric, nlist=20)
    hits = index.search(queries, n=10, nprobe="all")
    exact = cdist(queries.astype(np.float64), vectors.astype(np.float64), scipy_metric)
    expected_ids = np.argsort(exact, axis=1, kind="stable")[:, :10]
    np.testing.assert_allclose(hits.distances, np.take_along_axis(exact, expected_ids, 1), atol=1e-4)
    assert (hits.ids == expected_ids).mean() > 0.99  # only float ties may swap places
    assert hits.probed.shape == (50, 20)


def test_recall_rises_with_nprobe_and_reaches_one():
    vectors = gaussian_mixture(n=4000, dim=32, centers=40)
    index = build(vectors, "euclidean", nlist=64)
    sample = np.arange(0, 4000, 20)
    curve = recall_curve(index, vectors[sample], sample)
    values = [curve[p] for p in sorted(curve)]
    assert sorted(curve)[0] == 1 and sorted(curve)[-1] == 64
    assert all(b >= a - 1e-9 for a, b in zip(values, values[1:]))
    assert values[0] < 0.95  # one cluster loses neighbours near its border
    assert min(p for p, recall in curve.items() if recall >= 0.95) <= 16  # a quarter of the clusters finds them


@pytest.mark.parametrize("metric, dtype", [("euclidean", "float32"), ("cosine", "float16")])
def test_the_recall_curve_equals_recall_measured_by_routed_searches(metric, dtype):
    vectors = gaussian_mixture(n=3000, dim=24, centers=30)
    vectors[100:106] = vectors[90]  # exact twins tie
    index = ClusteredIndex(metric, dtype=dtype).fit(vectors, fit_kmeans(prepare_vectors(vectors, metric), 40, 0))
    sample = np.arange(0, 3000, 7)
    queries = index.stored_vectors()[sample]

    def answers(nprobe):  # the definition: 10 nearest other vectors by a routed search
        ids = index.search(queries, 11, nprobe, expansion=0).ids
        return np.array([row[row != own][:10] for row, own in zip(ids, sample)])

    exact = answers("all")
    curve = recall_curve(index, queries, sample)
    assert sorted(curve) == [1, 2, 4, 8, 16, 32, 40]
    for nprobe, recall in curve.items():
        assert recall == pytest.approx(recall_at_k(answers(nprobe), exact), abs=1e-3), nprobe


def test_smallest_nprobe_picks_the_first_that_reaches_the_target():
    assert smallest_nprobe({1: 0.5, 2: 0.9, 4: 0.97, 8: 1.0}, 0.95) == 4
    assert smallest_nprobe({1: 0.5, 2: 0.6}, 0.95) == 2


def test_results_are_sorted_and_padded_when_probed_clusters_are_small():
    vectors = gaussian_mixture(n=40, centers=8)
    index = build(vectors, "euclidean", nlist=8)
    hits = index.search(vectors[:3], n=30, nprobe=1)
    for distances, ids in zip(hits.distances, hits.ids):
        found = ids >= 0
        assert found.sum() < 30 and np.isinf(distances[~found]).all()
        assert np.all(np.diff(distances[found]) >= 0)
        assert not found[found.sum():].any()  # padding only at the end


def test_more_clusters_than_vectors_and_repeated_vectors_work():
    vectors = np.repeat(np.eye(3, dtype=np.float32), 2, axis=0)  # 6 vectors, 3 distinct
    index = ClusteredIndex("euclidean").fit(vectors, fit_kmeans(vectors, 6, seed=0))
    assert index.nlist == 3 and set(index.assignments_) == {0, 1, 2}  # empty clusters dropped
    hits = index.search(vectors[:1], n=2, nprobe=1)
    assert set(hits.ids[0]) == {0, 1} and np.allclose(hits.distances[0], 0)


def test_nprobe_is_clamped_to_the_number_of_clusters():
    index = build(gaussian_mixture(n=200), "cosine", nlist=5)
    assert index.resolve_nprobe(99) == 5 and index.resolve_nprobe("all") == 5 and index.resolve_nprobe(2) == 2


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_every_vector_lies_in_the_cluster_it_would_be_routed_to(metric):
    vectors = gaussian_mixture(n=2000)
    index = build(vectors, metric, nlist=16)
    routed = index.route(prepare_vectors(vectors, metric), 1)[:, 0]
    assert np.array_equal(index.assignments_, routed)
    assert index.search(vectors[:50], n=1, nprobe=1).ids[:, 0].tolist() == list(range(50))  # itself, in one probe


def test_add_places_new_vectors_where_routing_finds_them_and_keeps_the_old():
    vectors = gaussian_mixture(n=3000)
    index = build(vectors[:2500], "cosine", nlist=16)
    before = index.search(vectors[:20], n=5, nprobe="all")
    ids = index.add(vectors[2500:])
    assert ids.tolist() == list(range(2500, 3000)) and index.size == 3000
    found = index.search(vectors[2500:2600], n=1, nprobe=1).ids[:, 0]
    assert found.tolist() == list(range(2500, 2600))  # each new vector finds itself in one probe
    again = index.search(vectors[:20], n=5, nprobe="all")
    assert (again.ids[:, 0] == before.ids[:, 0]).all()  # old vectors still find themselves first
    fresh = ClusteredIndex("cosine").fit(vectors, index.centroids_)
    assert np.array_equal(fresh.assignments_, index.assignments_)  # same as indexing everything at once


@pytest.mark.parametrize("metric, scipy_metric", [("cosine", "cosine"), ("euclidean", "euclidean")])
def test_query_expansion_equals_a_brute_force_computed_by_hand(metric, scipy_metric):
    vectors = gaussian_mixture(n=500)
    queries = gaussian_mixture(n=20, seed=1)
    index = build(vectors, metric, nlist=10)
    prepared_vectors, prepared_queries = prepare_vectors(vectors, metric), prepare_vectors(queries, metric)
    exact = cdist(prepared_queries.astype(np.float64), prepared_vectors.astype(np.float64), scipy_metric)
    excluded = np.argsort(exact, axis=1, kind="stable")[:, :1]  # each query's nearest vector is left out
    first = np.argsort(exact, axis=1, kind="stable")[:, 1:4]  # so its next three are averaged in
    expanded = (prepared_queries + prepared_vectors[first].sum(axis=1)) / 4
    by_expanded = cdist(prepare_vectors(expanded, metric).astype(np.float64), prepared_vectors, scipy_metric)
    nearest = first[:, :1]  # the nearest to the query itself (but the excluded one) stays first
    rest = [[i for i in row if i != keep][:9] for row, keep in zip(np.argsort(by_expanded, axis=1, kind="stable"),
                                                                     nearest[:, 0])]
    expected = np.hstack([nearest, rest])

    hits = index.search(queries, n=10, nprobe="all", expansion=3, exclude=excluded)
    assert (hits.ids == expected).mean() > 0.99  # only float ties may swap places
    # the distances returned are the ones ranked by: the first's to the query, the others' to the expanded query
    np.testing.assert_allclose(hits.distances[:, 0], np.take_along_axis(exact, nearest, 1)[:, 0], atol=1e-4)
    np.testing.assert_allclose(hits.distances[:, 1:], np.take_along_axis(by_expanded, hits.ids[:, 1:], 1), atol=1e-4)
    assert np.all(np.diff(hits.distances[:, 1:], axis=1) >= 0)


def test_distances_to_named_vectors_and_padding():
    vectors = gaussian_mixture(n=300)
    index = build(vectors, "euclidean", nlist=6)
    ids = np.array([[5, 17, -1], [0, 299, 42]])
    distances = index.distances_to(vectors[:2], ids)
    np.testing.assert_allclose(distances[0, :2], np.linalg.norm(vectors[[5, 17]] - vectors[0], axis=1), rtol=1e-5)
    np.testing.assert_allclose(distances[1], np.linalg.norm(vectors[[0, 299, 42]] - vectors[1], axis=1), atol=1e-4)
    assert np.isinf(distances[0, 2])


def test_remove_drops_vectors_and_renumbers_the_rest_in_order():
    vectors = gaussian_mixture(n=600)
    index = build(vectors, "cosine", nlist=8)
    gone = np.array([0, 5, 299, 599])
    index.remove(gone)
    kept = np.delete(vectors, gone, axis=0)
    assert index.size == 596
    np.testing.assert_allclose(index.stored_vectors(), prepare_vectors(kept, "cosine"), atol=1e-6)
    fresh = ClusteredIndex("cosine").fit(kept, index.centroids_)
    assert np.array_equal(fresh.assignments_, index.assignments_)  # same as indexing the rest from scratch
    assert index.search(kept[:40], n=1, nprobe="all").ids[:, 0].tolist() == list(range(40))


def test_the_tuned_nprobe_and_expansion_are_the_index_defaults_and_are_stored():
    vectors = gaussian_mixture(n=4000, dim=32, centers=40)
    index = build(vectors, "cosine", nlist=64)
    index.nprobe, index.expansion = "auto", 2
    curve = index.tune_nprobe(target_recall=0.9)
    assert index.nprobe == "auto"  # the setting stays as given
    assert index.nprobe_ == smallest_nprobe(curve, 0.9) < 64 and curve[index.nprobe_] >= 0.9
    index.nprobe = 3
    assert index.tune_nprobe() == curve and index.nprobe_ == 3
    default = index.search(vectors[:30], n=5)
    assert default.probed.shape == (30, 3)
    assert np.array_equal(default.ids, index.search(vectors[:30], n=5, nprobe=3, expansion=2).ids)
    again = ClusteredIndex.from_arrays(index.to_arrays(), vectors)
    assert (again.metric, again.nprobe_, again.expansion) == ("cosine", 3, 2)
    assert np.array_equal(again.search(vectors[:30], n=5).ids, default.ids)


def test_auto_nprobe_reaches_its_target_on_held_out_queries():
    data = gaussian_mixture(n=8300, dim=32, centers=60, seed=3)
    indexed, held_out = data[:8000], data[8000:]
    config = tiny_config(target_recall=0.9)
    index, curve = build_index(indexed, config)
    nprobe = index.nprobe_
    assert index.nlist == 200  # min(4 sqrt(8000) = 358, 8000 / 40)
    assert 1 < nprobe < index.nlist and curve[nprobe] >= 0.9
    # 300 unseen queries x 10 neighbours: a standard error of about 0.005 on the measured recall
    assert recall_at_k(index.search(held_out, 10).ids, index.search(held_out, 10, "all").ids) >= 0.9 - 0.02
    smaller = max(p for p in curve if p < nprobe)
    assert curve[smaller] < 0.9  # and it is the smallest that does


def test_small_sets_search_every_cluster():
    index, _ = build_index(gaussian_mixture(n=500), tiny_config())
    assert index.nlist == 12 and index.nprobe_ == 12 and index.nprobe == "auto"


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_float16_storage_halves_the_vectors_and_keeps_the_neighbours(metric):
    vectors = gaussian_mixture(n=3000, dim=32)
    queries = gaussian_mixture(n=200, dim=32, seed=1)
    full = build(vectors, metric, nlist=20)
    half = ClusteredIndex(metric, dtype="float16").fit(vectors, full.centroids_)
    assert half.vectors_.dtype == np.float16 and half.vectors_.nbytes * 2 == full.vectors_.nbytes
    exact, rounded = full.search(queries, 10, "all"), half.search(queries, 10, "all")
    assert recall_at_k(rounded.ids, exact.ids) >= 0.98
    np.testing.assert_allclose(rounded.distances, exact.distances, rtol=2e-3, atol=2e-3)
    stored = ClusteredIndex.from_arrays(half.to_arrays(), vectors, laid_out=half.vectors_)  # as a bundle loads it
    assert stored.dtype == "float16" and np.array_equal(stored.search(queries, 10, "all").ids, rounded.ids)
    half.add(vectors[:5])  # growing keeps the storage type
    assert half.vectors_.dtype == np.float16 and half.size == 3005


def test_stored_float16_rows_convert_exactly():
    """The scan's fast conversion (OpenCV's) gives every float16 value as NumPy's exact one, zeros'
    signs and infinities included, in any row shape; only NaNs, which no index stores, may differ."""
    from pipeline.index.storage import as_float32

    every = np.arange(2**16, dtype=np.uint16).view(np.float16)
    for rows in (every.reshape(256, 256), every[:65535].reshape(-1, 3)[5:9], every[:0].reshape(0, 256)):
        converted = as_float32(rows)
        assert converted.dtype == np.float32 and converted.shape == rows.shape
        numbers = ~np.isnan(rows)
        assert np.array_equal(converted[numbers].view(np.uint32), rows[numbers].astype(np.float32).view(np.uint32))
        assert np.isnan(converted[~numbers]).all()


def test_a_few_queries_route_to_the_clusters_a_full_stable_sort_ranks_first():
    """A route of a few queries partitions its scores rather than sorting them: the same clusters in the same
    order as a stable sort, ties to the lower cluster, infinities and NaN last, however many are asked."""
    from pipeline.index.clustered import _smallest_few

    rng = np.random.default_rng(0)
    for trial in range(200):
        scores = rng.integers(0, 20, (3, int(rng.integers(1, 120)))).astype(np.float32)  # many ties
        scores[0, rng.integers(0, scores.shape[1], 4)] = np.nan
        scores[1, rng.integers(0, scores.shape[1], 4)] = np.inf
        k = int(rng.integers(1, scores.shape[1] + 2))
        assert np.array_equal(_smallest_few(scores, k), np.argsort(scores, axis=1, kind="stable")[:, :k]), trial


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_few_queries_rank_as_a_large_batch_does(metric, dtype):
    """A few queries take NumPy in the caller's thread, a large batch the Numba kernels: the same neighbours, the
    same distances (so a query process need not load Numba)."""
    from pipeline.index.clustered import PARALLEL_FROM

    vectors = gaussian_mixture(n=800)
    index = ClusteredIndex(metric, nprobe=3, dtype=dtype).fit(vectors, build(vectors, metric, nlist=12).centroids_)
    queries = gaussian_mixture(n=2 * PARALLEL_FROM, seed=3)
    batch = index.search(queries, 10)  # Numba, across the cores
    alone = [index.search(query[None], 10) for query in queries]  # NumPy, one at a time
    ids = np.vstack([hits.ids for hits in alone])
    assert (ids == batch.ids).mean() > 0.99  # only float ties may swap places
    np.testing.assert_allclose(np.vstack([hits.distances for hits in alone]), batch.distances, atol=1e-4)
    assert np.array_equal(np.vstack([hits.probed for hits in alone]), batch.probed)
    few = index.search(queries[:3], 2000, nprobe="all")  # more asked than there are: padded with -1 as before
    assert (few.ids[:, 800:] == -1).all() and np.isinf(few.distances[:, 800:]).all()
