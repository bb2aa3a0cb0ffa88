"""The fitted encoder on LiteRT and on Keras: the same descriptors, LiteRT without TensorFlow, mixed precision, an
int8 backbone."""

import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from helpers import ROOT, SAMPLE, tiny_config
from pipeline.bundle.artifacts import Bundle
from pipeline.data.images import prepare_image, read_file
from pipeline.errors import InputError
from pipeline.model.runtime import KerasEncoder, mixed_precision, resolve_runtime


def _sample_images(size: int, step: int = 20) -> np.ndarray:
    paths = sorted(SAMPLE.glob("*/*.jpg"))[::step]
    return np.stack([prepare_image(read_file(path), str(path), size) for path in paths])


def _cosines(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    return np.sum(first * second, axis=1) / np.linalg.norm(first, axis=1) / np.linalg.norm(second, axis=1)


def test_litert_and_keras_give_the_same_outputs(fitted):
    bundle = Bundle.load(fitted[0])
    litert, tensorflow = bundle.encoder("litert"), bundle.encoder("keras")
    images = _sample_images(bundle.settings.image_size)
    exported, reference = litert.encode_outputs(images), tensorflow.encode_outputs(images)
    assert set(exported) == set(reference) == {"descriptor", "latent", "orientations", "colors", "backbone",
                                               "feature_map"}
    for name in exported:
        assert exported[name].shape == reference[name].shape
        flat = (exported[name].reshape(len(images), -1), reference[name].reshape(len(images), -1))
        assert _cosines(*flat).min() > 0.99999, name
    np.testing.assert_array_equal(litert.encode(images), exported["descriptor"])


def test_an_int8_fit_quantizes_its_backbone_alone_and_indexes_what_its_export_gives(photos, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    from pipeline.errors import ArtifactError
    from pipeline.train.export import INT8_MEDIAN_COSINE, check_export
    from pipeline.fit import fit

    fit(photos, tmp_path / "int8", tiny_config(precision="int8"))
    bundle = Bundle.load(tmp_path / "int8")
    interpreter = Interpreter(model_content=bundle.export())
    dtypes = {tensor["index"]: tensor["dtype"] for tensor in interpreter.get_tensor_details()}
    computes = {(op["op_name"], dtypes[op["outputs"][0]]) for op in interpreter._get_ops_details()}
    assert {("CONV_2D", np.int8), ("DEPTHWISE_CONV_2D", np.int8)} <= computes  # the backbone
    head = {dtype for name, dtype in computes if name in ("FULLY_CONNECTED", "DIV", "SQRT", "RSQRT", "ATAN2")}
    assert head == {np.float32}  # whitening, normalising, histograms
    size = bundle.settings.image_size
    images = np.stack([prepare_image(read_file(path), path, size) for path in bundle.catalog.paths])
    exported = bundle.encoder("litert").encode(images)
    np.testing.assert_allclose(exported, bundle.embeddings, atol=1e-5)  # indexed as queried
    float_encoder = KerasEncoder(bundle.keras_encoder()).encode(images)
    near = _cosines(exported, float_encoder)
    assert np.median(near) >= INT8_MEDIAN_COSINE and near.min() < 0.9999  # quantized, and near
    with pytest.raises(ArtifactError, match=r"the int8 export differs from the Keras encoder \(median cosine"):
        check_export(bundle.encoder("litert"), images, float_encoder[::-1], "encoder.tflite", int8=True)  # others' descriptors
    with pytest.raises(InputError, match="int8 export.*--runtime litert"):
        bundle.encoder("keras")


def test_without_litert_an_int8_fit_is_refused_before_it_starts_and_its_bundle_says_why(fitted_copy, monkeypatch,
                                                                                         photos, tmp_path):
    import json

    import pipeline.fit
    import pipeline.model.runtime

    monkeypatch.setattr(pipeline.model.runtime, "litert_installed", lambda: False)
    monkeypatch.setattr(pipeline.fit, "litert_installed", lambda: False)
    with pytest.raises(InputError, match="--precision int8: .*LiteRT .*not installed here; fit with --precision fp32"):
        pipeline.fit.fit(photos, tmp_path / "int8", tiny_config(precision="int8"))
    assert not (tmp_path / "int8").exists()
    manifest = next(fitted_copy.glob("bundle-*/manifest.json"))
    written = json.loads(manifest.read_text())
    written["settings"]["precision"] = "int8"  # as an int8 fit on a machine with LiteRT wrote it
    manifest.write_text(json.dumps(written))
    with pytest.raises(InputError, match="int8 export.*LiteRT \\(ai-edge-litert\\), which is not installed here"):
        Bundle.load(fitted_copy).encoder()


def test_the_default_runtime_is_litert_where_installed_and_keras_elsewhere(monkeypatch):
    import pipeline.model.runtime as runtime

    assert resolve_runtime(None) == "litert" and resolve_runtime("keras") == "keras"
    monkeypatch.setattr(runtime, "litert_installed", lambda: False)
    assert resolve_runtime(None) == "keras"
    with pytest.raises(InputError, match="LiteRT .*not installed.*--runtime keras"):
        resolve_runtime("litert")
    with pytest.raises(InputError, match="runtime must be one of litert, keras"):
        resolve_runtime("onnx")


def test_a_search_a_sync_and_a_served_query_never_import_tensorflow(fitted_copy):
    """In a fresh process: a real predict, a sync that embeds a new photo, and a query to the service."""
    artifacts = fitted_copy
    photo = sorted(SAMPLE.glob("hat/*.jpg"))[-1]
    data = Bundle.load(artifacts).manifest.data_dir
    script = f"""
import shutil, sys
from fastapi.testclient import TestClient
from pipeline.bundle.artifacts import Bundle
from pipeline.cli import build_parser
from pipeline.collection.changes import sync
from pipeline.search.searcher import Searcher, SearchOptions
from pipeline.serve.server import create_app

searcher = Searcher(Bundle.load({str(artifacts)!r}))
assert searcher.search_file({str(photo)!r}, SearchOptions(n=3)).results
shutil.copy({str(photo)!r}, {data!r} + "/hat/new-for-the-runtime-test.jpg")
change = sync({str(artifacts)!r})
assert change.added == 1, change
client = TestClient(create_app(Searcher(Bundle.load({str(artifacts)!r}), batch_window_ms=5)))
with open({str(photo)!r}, "rb") as handle:
    response = client.post("/api/search", files={{"image": ("q.jpg", handle, "image/jpeg")}})
assert response.status_code == 200 and response.json()["results"][0]["same_image"], response.text
print("tensorflow" in sys.modules, "keras" in sys.modules)
"""
    try:
        done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        (Path(data) / "hat" / "new-for-the-runtime-test.jpg").unlink(missing_ok=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]


def _layers(model):
    for layer in model.layers:
        yield from _layers(layer) if hasattr(layer, "layers") else [layer]


def test_a_mixed_precision_encoder_computes_its_convolutions_in_float16_with_the_same_descriptors(fitted):
    encoder = Bundle.load(fitted[0]).keras_encoder()
    mixed = mixed_precision(encoder)
    convolutions = [layer for layer in _layers(mixed) if isinstance(layer, (keras.layers.Conv2D,
                                                                            keras.layers.DepthwiseConv2D))]
    assert len(convolutions) >= 49 and {layer.compute_dtype for layer in convolutions} == {"float16"}
    assert {layer.variable_dtype for layer in convolutions} == {"float32"}
    assert {layer.compute_dtype for layer in _layers(encoder)} == {"float32"}  # the loaded encoder is untouched
    images = _sample_images(encoder.input_shape[1])
    exact, half = KerasEncoder(encoder).encode(images), KerasEncoder(encoder, float16=True).encode(images)
    assert half.dtype == np.float32
    assert _cosines(exact, half).min() > 0.999
