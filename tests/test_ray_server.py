"""The index sharded by its own clusters, and serve --ray: the one-process answers, one bundle version per query,
and faults that never give fewer results."""

from __future__ import annotations

import shutil
import socket
import threading
import time

import numpy as np
import pytest

from pipeline.bundle.artifacts import Bundle
from pipeline.search.searcher import Searcher
from pipeline.search.shards import ShardedIndex, ShardScanner, local_fan_out, shard_plan


@pytest.fixture(scope="module")
def clustered(photos, tmp_path_factory):
    """A fit of the session's photos into 5 clusters: (artifacts folder, FitSummary)."""
    from helpers import tiny_config
    from pipeline.fit import fit

    artifacts = tmp_path_factory.mktemp("clustered")
    return artifacts, fit(photos, artifacts, tiny_config(clusters=5))


def _sharded(bundle, shards):
    scanners = {shard: ShardScanner(bundle.folder, shard, shards) for shard in range(shards)}
    return ShardedIndex(bundle.index, bundle.folder, shards, local_fan_out(scanners)), scanners


def test_the_shard_plan_spreads_whole_clusters_evenly_and_the_same_everywhere():
    sizes = np.array([50, 10, 40, 30, 30, 20, 5, 15, 0])
    owner = shard_plan(sizes, 3)
    held = np.bincount(owner, weights=sizes, minlength=3)
    assert sorted(held) == [65, 65, 70] and np.array_equal(owner, shard_plan(sizes.copy(), 3))
    assert np.array_equal(shard_plan(sizes, 1), np.zeros(len(sizes)))
    with pytest.raises(ValueError, match="shards must be at least 1"):
        shard_plan(sizes, 0)


@pytest.mark.parametrize("shards", [1, 2, 3])
def test_a_sharded_index_answers_as_the_whole_index_to_the_last_bit(clustered, shards):
    bundle = Bundle.load(clustered[0])
    sharded, scanners = _sharded(bundle, shards)
    assert sum(scanner.vectors for scanner in scanners.values()) == len(bundle.catalog)
    assert sorted(np.concatenate([scanner.clusters for scanner in scanners.values()])) == list(range(bundle.index.nlist))
    queries = np.asarray(bundle.embeddings)
    for nprobe in range(1, bundle.index.nlist + 1):
        for expansion in (0, 3):
            whole = bundle.index.search(queries, 9, nprobe, expansion, np.arange(len(queries))[:, None])
            parts = sharded.search(queries, 9, nprobe, expansion, np.arange(len(queries))[:, None])
            assert np.array_equal(whole.ids, parts.ids) and np.array_equal(whole.distances, parts.distances)
            assert np.array_equal(whole.probed, parts.probed)


def test_a_shard_refuses_clusters_it_does_not_hold(clustered):
    bundle = Bundle.load(clustered[0])
    scanner = ShardScanner(bundle.folder, 0, 2)
    foreign = next(cluster for cluster in range(bundle.index.nlist) if cluster not in scanner.clusters)
    for cluster in (foreign, bundle.index.nlist + 1, -1):  # another shard's, and clusters out of range
        with pytest.raises(ValueError, match="does not hold clusters"):
            scanner.scan(np.asarray(bundle.embeddings[:1]), np.array([[scanner.clusters[0], cluster]]), 5)
    assert scanner.scan(np.asarray(bundle.embeddings[:1]), np.array([[scanner.clusters[0], bundle.index.nlist]]),
                        5)[1].shape == (1, 5)  # nlist: no cluster, skipped


def test_a_shard_replica_answers_on_a_loaded_version_while_it_loads_another(clustered, tmp_path, monkeypatch):
    """A scan runs on the replica's event loop, a load in a thread: a slow load of the next version
    holds up no query on the version already loaded, and the new version answers once loaded."""
    import asyncio

    import pipeline.serve.ray_server as ray_server

    bundle = Bundle.load(clustered[0])
    copy = tmp_path / bundle.folder.name
    shutil.copytree(bundle.folder, copy)
    query, probed = np.asarray(bundle.embeddings[:1]), np.arange(bundle.index.nlist)[None]
    expected = ShardScanner(bundle.folder, 0, 1).scan(query, probed, 5)
    loading = threading.Event()

    class _SlowScanner(ShardScanner):
        def __init__(self, folder, shard, shards):
            if str(folder) == str(copy):
                loading.set()
                time.sleep(1.5)
            super().__init__(folder, shard, shards)

    monkeypatch.setattr(ray_server, "ShardScanner", _SlowScanner)
    replica = ray_server.ShardReplica(0, 1)

    async def queries():
        await replica.scan(str(bundle.folder), query, probed, 5)
        newer = asyncio.create_task(replica.scan(str(copy), query, probed, 5))
        await asyncio.sleep(0.05)  # the newer version's load has begun
        during = await replica.scan(str(bundle.folder), query, probed, 5)
        answered_before_the_load_ended = loading.is_set() and not newer.done()
        return during, answered_before_the_load_ended, await newer

    during, answered_before_the_load_ended, newer = asyncio.run(queries())
    assert answered_before_the_load_ended
    for answer in (during, newer):
        assert np.array_equal(answer[0], expected[0]) and np.array_equal(answer[1], expected[1])
    assert list(replica._loaded) == [str(bundle.folder), str(copy)]


# serve --ray: a Ray Serve application on a local Ray cluster

serve = pytest.importorskip("ray.serve")


class _Failing:
    """A deployment handle whose every call fails, as one to a shard whose replicas are all dead."""

    class _Method:
        def remote(self, *args):
            raise RuntimeError("ActorDiedError: the replica died")

    def __getattr__(self, name):
        return self._Method()


def test_a_query_that_cannot_reach_a_shard_gets_503_never_fewer_results(clustered, monkeypatch):
    from starlette.testclient import TestClient

    import pipeline.serve.ray_server as ray_server
    from pipeline.serve.server import create_app

    monkeypatch.setattr(ray_server, "RETRY_PAUSE_S", 0.0)
    bundle = Bundle.load(clustered[0])
    scanners = {0: ShardScanner(bundle.folder, 0, 2)}

    class _Local:  # shard 0 answers in this process; shard 1 is _Failing
        class scan:
            @staticmethod
            def remote(folder, queries, probed, n):
                answer = scanners[0].scan(queries, probed, n)
                return type("Done", (), {"result": lambda self, timeout_s=None: answer})()

    class _LocalEncoder(ray_server.ShardedSearcher):  # the encoder in this process: the shards are what is tested
        def _encoder_for(self, bundle):
            return bundle.encoder()

    searcher = _LocalEncoder(bundle, None, [_Local(), _Failing()], None, 0.0)
    client = TestClient(create_app(searcher))
    answer = client.post("/api/search", json={"id": 3, "n": 5, "nprobe": "all"})
    assert answer.status_code == 503 and answer.headers["retry-after"]
    assert answer.json()["error"] == ("shard 1 of 2 did not answer (ActorDiedError: the replica died); no partial "
                                      "answer is given, try again")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=16, include_dashboard=False, log_to_driver=False, configure_logging=False)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"log_level": "WARNING"})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


def _deploy(artifacts, shards, replicas=1, **service):
    from pipeline.serve.ray_server import APP_NAME, RayServeOptions, application

    options = RayServeOptions(str(artifacts), shards=shards, shard_replicas=replicas, service=service)
    serve.run(application(options)[0], name=APP_NAME, route_prefix="/")


def _answers(post, ids, nprobe="all"):
    """Each image's answer (ids, distances, scores) from a client's POST."""
    answers = {}
    for image_id in ids:
        body = post("/api/search", json={"id": image_id, "n": 8, "nprobe": nprobe}).json()
        answers[image_id] = [(hit["id"], hit["distance"], hit["score"]) for hit in body["results"]]
    return answers


@pytest.mark.parametrize("shards", [1, 2, 3])
def test_serve_ray_answers_as_the_one_process_server(ray_cluster, clustered, http_root, http_url, shards):
    import httpx
    from starlette.testclient import TestClient

    from pipeline.serve.server import create_app

    bundle = Bundle.load(clustered[0])
    _deploy(clustered[0], shards, allow_private_urls=True)
    alone = TestClient(create_app(Searcher(bundle), allow_private_urls=True))
    ids = bundle.catalog.ids.tolist()
    with httpx.Client(base_url=ray_cluster, timeout=60) as spread:
        for nprobe in ("all", 1):
            assert _answers(spread.post, ids, nprobe) == _answers(alone.post, ids, nprobe)
        with open(bundle.catalog.paths[5], "rb") as handle:
            photo = handle.read()
        uploads = [client.post("/api/search", files={"image": ("q.jpg", photo, "image/jpeg")}, data={"n": "6"}).json()
                   for client in (spread, alone)]
        assert uploads[0]["results"] == uploads[1]["results"] and uploads[0]["results"][0]["same_image"]
        shutil.copy(bundle.catalog.paths[9], http_root / "ray.jpg")
        by_url = [client.post("/api/search", json={"url": f"{http_url}/ray.jpg", "n": 4}) for client in (spread, alone)]
        assert by_url[0].status_code == 200 and by_url[0].json()["results"] == by_url[1].json()["results"]
        assert spread.get(f"/api/images/{ids[2]}").content == alone.get(f"/api/images/{ids[2]}").content
        assert spread.get(f"/api/images/{ids[2]}/full").content == open(bundle.catalog.paths[2], "rb").read()
        stats = spread.get("/api/stats").json()
        assert stats["images"] == len(ids) and len(stats["shards"]) == shards
        assert sum(shard["vectors"] for shard in stats["shards"]) == len(ids)
        assert all(shard["replicas"] == 1 for shard in stats["shards"]) and stats["encoder_replicas"] == 1
        assert spread.get("/").status_code == 200 and "/api/search" in spread.get("/page.js").text


def test_a_shard_replica_killed_under_load_fails_no_query(ray_cluster, clustered):
    import httpx
    import ray

    bundle = Bundle.load(clustered[0])
    _deploy(clustered[0], shards=2, replicas=2)
    ids = bundle.catalog.ids.tolist()
    with httpx.Client(base_url=ray_cluster, timeout=60) as client:
        expected = _answers(client.post, ids)
        failures, answered, stop = [], [0], threading.Event()

        def load():
            while not stop.is_set():
                for image_id in ids[:8]:
                    body = client.post("/api/search", json={"id": image_id, "n": 8, "nprobe": "all"})
                    got = [(h["id"], h["distance"], h["score"]) for h in body.json().get("results", [])]
                    if body.status_code != 200 or got != expected[image_id]:
                        failures.append((body.status_code, body.text[:200]))
                    answered[0] += 1
                    time.sleep(0.1)

        worker = threading.Thread(target=load)
        worker.start()
        time.sleep(2)
        replica = next(actor for actor in ray.util.list_named_actors(all_namespaces=True)
                       if "shard-0" in actor["name"])
        ray.kill(ray.get_actor(replica["name"], namespace=replica["namespace"]), no_restart=True)
        time.sleep(6)
        stop.set()
        worker.join()
        deadline = time.time() + 30  # Ray Serve starts a replica in place of the killed one
        while time.time() < deadline and client.get("/api/stats").json()["shards"][0]["replicas"] != 2:
            time.sleep(0.5)
        assert client.get("/api/stats").json()["shards"][0]["replicas"] == 2
    assert answered[0] > 30 and failures == []


def test_a_query_is_answered_from_one_bundle_version_while_a_removal_commits(ray_cluster, clustered, tmp_path):
    import httpx
    from starlette.testclient import TestClient

    from helpers import copy_of_fit
    from pipeline.collection.changes import remove_images
    from pipeline.serve.server import create_app

    artifacts, _ = copy_of_fit(clustered[0], tmp_path)
    before = Bundle.load(artifacts)
    ids = before.catalog.ids.tolist()
    _deploy(artifacts, shards=2, reload_seconds=0.2)
    old = _answers(TestClient(create_app(Searcher(before))).post, ids[:6])
    with httpx.Client(base_url=ray_cluster, timeout=60) as client:
        assert _answers(client.post, ids[:6]) == old
        seen, stop = [], threading.Event()

        def load():
            while not stop.is_set():
                seen.append(_answers(client.post, ids[:6]))

        worker = threading.Thread(target=load)
        worker.start()
        while not seen:
            time.sleep(0.05)
        remove_images([str(image_id) for image_id in ids[6:12]], artifacts)
        after = Bundle.load(artifacts)
        new = _answers(TestClient(create_app(Searcher(after))).post, ids[:6])
        deadline = time.time() + 20
        while time.time() < deadline and (not seen or seen[-1] != new):
            time.sleep(0.2)
        stop.set()
        worker.join()
    assert new != old and seen[-1] == new and any(answers == old for answers in seen)
    for answers in seen:  # every answer wholly the old version's or wholly the new one's
        for image_id, hits in answers.items():
            assert hits in (old[image_id], new[image_id])


def test_the_ray_flags_belong_to_serve_ray(clustered):
    import subprocess
    import sys

    from helpers import ROOT

    def serve(*flags):
        return subprocess.run([sys.executable, "-m", "pipeline.cli", "serve", "--artifacts", str(clustered[0]), *flags],
                              capture_output=True, text=True, cwd=ROOT, timeout=120)

    alone = serve("--shards", "2")
    assert alone.returncode == 2 and alone.stderr == ("error: --shards, --shard-replicas, --encoder-replicas and "
                                                      "--encoder-gpus are for serve --ray\n")
    keras = serve("--ray", "--runtime", "keras")
    assert keras.returncode == 2 and "serve --ray runs the fit's LiteRT export" in keras.stderr
    bounds = serve("--ray", "--encoder-replicas", "3-1")
    assert bounds.returncode == 2 and "replicas must be MIN or MIN-MAX" in bounds.stderr
