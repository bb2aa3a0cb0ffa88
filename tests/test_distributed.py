"""The images-to-vectors step on a local Ray cluster: the same bundle as one machine, bad files listed, a killed
worker retried."""

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import copy_subset, tiny_config

ray = pytest.importorskip("ray")

from pipeline.bundle.artifacts import Bundle  # noqa: E402
from pipeline.data.images import find_images  # noqa: E402
from pipeline.engines.distributed import RayEngine  # noqa: E402
from pipeline.search.searcher import Searcher, SearchOptions  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    """A local two-CPU cluster with one logical GPU (Ray schedules by it; TensorFlow, CPU-only here, runs on the
    CPU); the encoder actors take a fraction of a CPU so that decoding tasks still run."""
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield RayEngine(workers=1, cpus_per_worker=1.0)
    ray.shutdown()


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """24 real photos, a truncated JPEG and an empty file."""
    folder = copy_subset(tmp_path_factory.mktemp("ray") / "photos", classes=("dress", "hat", "shoes"), per_class=8)
    good = next((folder / "hat").glob("*.jpg")).read_bytes()
    (folder / "hat" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (folder / "shoes" / "empty.jpg").write_bytes(b"")
    return folder


def test_listing_on_ray_finds_what_find_images_finds(cluster, tmp_path):
    import os
    import shutil

    folder = copy_subset(tmp_path / "photos", classes=("dress", "hat"), per_class=3)
    some = next((folder / "hat").glob("*.jpg"))
    shutil.copy2(some, folder / "loose.jpg")  # no label
    (folder / "dress" / "deeper").mkdir()
    shutil.copy2(some, folder / "dress" / "deeper" / "zz.jpg")  # labelled by its first-level folder
    (folder / ".hidden").mkdir()
    shutil.copy2(some, folder / ".hidden" / "skip.jpg")
    os.symlink(folder / "hat", folder / "linked")  # a link to a folder is not followed, as by os.walk
    assert cluster.find_images(folder) == find_images(folder)
    assert len(find_images(folder)) == 8
    shutil.copy2(some, folder / "hat" / "as.png")  # a JPEG under another name: only --extensions .png finds it alone
    assert cluster.find_images(folder, {".png"}) == find_images(folder, extensions={".png"})
    assert [Path(record.path).name for record in find_images(folder, extensions={".png"})] == ["as.png"]


def test_a_fit_on_ray_gives_the_same_bundle_as_one_machine(cluster, messy, tmp_path):
    from pipeline.fit import fit

    sampled = tiny_config(train_sample=12)  # the images beyond the training sample are embedded where the engine runs
    alone = fit(messy, tmp_path / "alone", sampled)
    spread = fit(messy, tmp_path / "ray", sampled, cluster)
    assert "embed rest" in spread.stage_seconds
    one, other = Bundle.load(tmp_path / "alone"), Bundle.load(tmp_path / "ray")
    assert one.catalog.paths == other.catalog.paths and one.catalog.hashes == other.catalog.hashes
    assert one.catalog.labels == other.catalog.labels and len(one.catalog) == 24
    assert [(s.path, s.reason) for s in alone.skipped] == [(s.path, s.reason) for s in spread.skipped]
    assert {Path(s.path).name for s in spread.skipped} == {"truncated.jpg", "empty.jpg"}
    assert other.manifest.skipped == one.manifest.skipped
    np.testing.assert_allclose(other.embeddings, one.embeddings, atol=1e-5)  # the same export, on the cluster
    assert one.catalog.clusters == other.catalog.clusters  # and the clusters assigned by tasks there
    # the same encoder's vectors, computed on the cluster: the same neighbours
    again = cluster.embed(find_images(messy), one, one.settings)
    assert [r.path for r in again.records] == one.catalog.paths
    np.testing.assert_allclose(again.vectors, one.embeddings, atol=1e-4)
    searcher = Searcher(one)
    for image_id in (0, 9, 17):
        expected = [hit.id for hit in searcher.search_indexed(image_id, SearchOptions(n=6, nprobe="all")).results]
        hits = one.index.search(again.vectors[image_id][None], 7, "all", exclude=np.array([[image_id]])).ids[0]
        assert [image_id] + [i for i in hits if i != image_id][:5] == expected


def test_add_on_ray_indexes_like_add_alone(cluster, messy, tmp_path):
    import shutil

    from pipeline.collection.changes import add_images
    from pipeline.fit import fit

    base = copy_subset(tmp_path / "base", classes=("pants",), per_class=6)
    fit(base, tmp_path / "artifacts", tiny_config())
    shutil.copytree(tmp_path / "artifacts", tmp_path / "copy")
    alone, spread = add_images(messy, tmp_path / "artifacts"), add_images(messy, tmp_path / "copy", cluster)
    assert (spread.added, len(spread.skipped)) == (alone.added, len(alone.skipped)) == (24, 2)
    one, other = Bundle.load(tmp_path / "artifacts"), Bundle.load(tmp_path / "copy")
    assert one.catalog == other.catalog
    np.testing.assert_allclose(one.embeddings, other.embeddings, atol=1e-5)


def test_encoder_actors_given_a_gpu_compute_in_mixed_precision_with_the_same_neighbours(cluster, messy, tmp_path):
    from pipeline.errors import InputError
    from pipeline.fit import fit

    fit(messy, tmp_path / "artifacts", tiny_config())
    bundle = Bundle.load(tmp_path / "artifacts")
    on_gpu = RayEngine(workers=1, cpus_per_worker=1.0, gpus_per_worker=0.5)
    half = on_gpu.embed(find_images(messy), bundle, bundle.settings)
    assert [r.path for r in half.records] == bundle.catalog.paths and len(half.skipped) == 2
    exact = np.asarray(bundle.embeddings)
    cosine = np.sum(exact * half.vectors, axis=1) / np.linalg.norm(exact, axis=1) / np.linalg.norm(half.vectors, axis=1)
    assert 0.999 < cosine.min()
    assert np.abs(half.vectors - exact).max() > 1e-3  # float16 inside: beyond the CPU path's 1e-4
    nearest = bundle.index.search(half.vectors, 2, "all", expansion=0).ids[:, 0]
    assert np.array_equal(nearest, np.arange(len(exact)))  # each image's own vector is still its nearest
    with pytest.raises(InputError, match=r"--ray-gpus-per-worker 2 is more than the cluster's GPUs \(1\)"):
        RayEngine(gpus_per_worker=2).pool_size()


def _encoder_actors() -> list[int]:
    """Process ids of the Ray workers running an encoder actor."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"EncoderActor" in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_a_killed_worker_is_retried_and_nothing_is_lost_or_doubled(cluster, messy, tmp_path):
    from pipeline.fit import fit

    fit(messy, tmp_path / "artifacts", tiny_config(batch_size=4))  # the actors then embed 4 images a call
    bundle = Bundle.load(tmp_path / "artifacts")
    records = find_images(messy) * 20  # 520 files, each many times: rows are told apart by position, not path
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(result=cluster.embed(records, bundle, bundle.settings)))
    worker.start()
    deadline, killed = time.monotonic() + 120, None
    while killed is None and time.monotonic() < deadline and worker.is_alive():
        actors = _encoder_actors()
        if actors:
            time.sleep(1)  # let it load the encoder and start on the batches
            os.kill(actors[0], signal.SIGKILL)
            killed = actors[0]
        time.sleep(0.05)
    worker.join(timeout=300)
    assert killed is not None, "no encoder actor was seen running"
    result = outcome["result"]
    assert len(result.records) == 480 and len(result.skipped) == 40  # every row once, the bad files listed each time
    expected = np.concatenate([bundle.embeddings] * 20)
    np.testing.assert_allclose(result.vectors, expected, atol=1e-4)


def test_the_command_line_adds_on_a_local_cluster_without_noise(tmp_path):
    import subprocess
    import sys

    from helpers import ROOT
    from pipeline.fit import fit

    fit(copy_subset(tmp_path / "base", classes=("pants",), per_class=4), tmp_path / "artifacts", tiny_config())
    more = copy_subset(tmp_path / "more", classes=("hat",), per_class=3)
    process = subprocess.run([sys.executable, str(ROOT / "scripts" / "add.py"), str(more), "--artifacts",
                              str(tmp_path / "artifacts"), "--ray", "--ray-workers", "1"],
                             capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert process.returncode == 0, process.stderr
    assert process.stdout.startswith("add: 3 added, 0 changed, 0 removed")
    lines = [line for line in process.stderr.replace("\r", "\n").splitlines() if line.strip()]
    ours = ("decode", "embed", "hash", "add:", "Ray cluster:", "skipped", "43% of the images")
    noise = [line for line in lines if not line.startswith(ours)]
    assert noise == [], noise  # progress bars and our own log lines only: nothing from Ray or TensorFlow
