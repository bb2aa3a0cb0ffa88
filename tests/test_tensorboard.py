"""TensorBoard: a fit's curves, reconstructions and best epoch read back with TensorBoard's own event reader; the
projector's config, vectors, metadata and sprite read back from the folder `imgsim report --projector` writes."""

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers import PIXELS, ROOT, copy_subset, tiny_config
from pipeline.bundle.artifacts import Bundle

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def read_events(folder):
    """Every tensor summary under ``folder``, by tag: [(step, value)]."""
    from tensorboard.util.tensor_util import make_ndarray

    events = event_accumulator.EventAccumulator(str(folder), size_guidance={"tensors": 0})
    events.Reload()
    return {tag: [(event.step, make_ndarray(event.tensor_proto)) for event in events.Tensors(tag)]
            for tag in events.Tags()["tensors"]}


def test_a_pixel_fit_writes_its_curves_reconstructions_and_best_epoch(tmp_path):
    from pipeline.fit import fit

    photos = copy_subset(tmp_path / "photos", classes=("hat", "shoes", "dress"), per_class=8)
    board = tmp_path / "board"
    fit(photos, tmp_path / "artifacts", tiny_config(**PIXELS, epochs=3, consistency=0.0), tensorboard=board)
    history = Bundle.load(tmp_path / "artifacts").manifest.history
    tags = read_events(board / "train")
    assert {"loss", "val_loss", "reconstruction", "learning_rate", "best_epoch", "kept_epoch"} <= set(tags)
    epochs = len(history["loss"])
    assert [step for step, _ in tags["loss"]] == list(range(1, epochs + 1))
    assert [float(value) for _, value in tags["val_loss"]] == pytest.approx(history["val_loss"], rel=1e-6)
    assert float(tags["learning_rate"][0][1]) == pytest.approx(tiny_config(**PIXELS).learning_rate)
    (step, best), = tags["best_epoch"]
    assert step == int(best) and history["val_loss"][step - 1] <= min(history["val_loss"]) * (1 + 1e-3)
    assert tags["kept_epoch"][0][1].item().decode().startswith(f"kept epoch {step}: the lowest val_loss")
    reconstructions = next(values for tag, values in tags.items() if tag.startswith("reconstructions"))
    assert len(reconstructions) == epochs
    width, height, *encoded = reconstructions[-1][1]  # the image plugin's tensor: width, height, PNG bytes
    picture = Image.open(io.BytesIO(encoded[0]))
    assert picture.size == (int(width), int(height)) == (2 * 32, 32)  # the image beside its reconstruction


def test_a_fit_over_the_backbone_writes_curves_without_pictures(tmp_path):
    from pipeline.fit import fit

    photos = copy_subset(tmp_path / "photos", classes=("hat", "shoes"), per_class=6)
    fit(photos, tmp_path / "artifacts", tiny_config(epochs=2), tensorboard=tmp_path / "board")
    tags = read_events(tmp_path / "board" / "train")
    assert {"loss", "learning_rate", "best_epoch"} <= set(tags)
    assert not any(tag.startswith("reconstructions") for tag in tags)


def test_report_writes_the_projector_folder(fitted, tmp_path):
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    artifacts, _ = fitted
    projector = tmp_path / "projector"
    process = subprocess.run([sys.executable, str(ROOT / "scripts" / "report.py"), "--artifacts", str(artifacts),
                              "--out", str(tmp_path / "report.html"), "--projector", str(projector)],
                             capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr
    assert f"projector: {projector}" in process.stdout
    config = text_format.Parse((projector / "projector_config.pbtxt").read_text(), ProjectorConfig())
    embedding, = config.embeddings
    bundle = Bundle.load(artifacts)
    vectors = np.loadtxt(projector / embedding.tensor_path, delimiter="\t", ndmin=2)
    assert vectors.shape == tuple(embedding.tensor_shape) == np.asarray(bundle.embeddings).shape
    np.testing.assert_allclose(vectors, bundle.embeddings, rtol=1e-5, atol=1e-6)
    rows = (projector / embedding.metadata_path).read_text().splitlines()
    assert rows[0] == "label\tpath\tid" and len(rows) == len(bundle.catalog) + 1
    assert rows[1].split("\t") == [bundle.catalog.labels[0], bundle.catalog.paths[0], str(bundle.catalog.ids[0])]
    side, _ = embedding.sprite.single_image_dim
    sprite = np.asarray(Image.open(projector / embedding.sprite.image_path))
    per_row = int(np.ceil(np.sqrt(len(bundle.catalog))))
    assert sprite.shape == (per_row * side, per_row * side, 3)
    assert sprite[:side, :side].std() > 10  # the first image's thumbnail, not the grey of a gap
