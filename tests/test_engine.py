"""The local engine: the same listing, vectors and clusters as the fit made, and the same methods as Ray's."""

import inspect

import numpy as np

from pipeline.bundle.artifacts import Bundle
from pipeline.data.images import ImageRecord, find_images
from pipeline.engines.engine import LocalEngine, StagedEncoder
from pipeline.index.clustered import prepare_vectors


def test_it_lists_embeds_and_assigns_as_the_fit_did(fitted, photos, tmp_path):
    bundle = Bundle.load(fitted[0])
    engine = LocalEngine()
    records = engine.find_images(photos)
    assert records == find_images(photos) and [r.path for r in records] == bundle.catalog.paths
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    embedded = engine.embed(records + [ImageRecord(str(broken), None)], bundle, bundle.settings)
    assert [s.path for s in embedded.skipped] == [str(broken)] and embedded.hashes == bundle.catalog.hashes
    np.testing.assert_allclose(embedded.vectors, bundle.embeddings, atol=1e-4)  # the fit's vectors came from Keras
    index = bundle.index
    prepared = prepare_vectors(np.asarray(bundle.embeddings), index.metric)
    assert np.array_equal(engine.assign(prepared, index.centroids_, index.metric), index.assignments_)


def test_a_fits_staged_encoder_is_the_bundles(fitted, photos):
    bundle = Bundle.load(fitted[0])
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    staged = StagedEncoder(bundle.folder)
    assert np.array_equal(staged.encoder("litert").encode(images), bundle.encoder("litert").encode(images))
    assert staged.model_bytes("litert") == bundle.model_bytes("litert") == bundle.export()


def test_local_and_ray_engines_offer_the_same_methods():
    from pipeline.engines.distributed import RayEngine  # Ray itself is imported only when a method runs

    def methods(cls) -> dict:
        return {name: list(inspect.signature(member).parameters) for name, member in vars(cls).items()
                if not name.startswith("_") and callable(member)}

    local, ray = methods(LocalEngine), methods(RayEngine)
    assert {"find_images", "embed", "assign"} <= set(local)
    assert {name: ray[name] for name in local} == local
