"""The autoencoder study's 24 models (3 kinds x output activation x optimizer x loss) each fit two epochs on a
tiny folder, write a bundle and answer a query through the inference runtime."""

import itertools
import math

import pytest

from helpers import PIXELS, copy_subset, tiny_config
from pipeline.bundle.artifacts import Bundle
from pipeline.search.searcher import Searcher, SearchOptions

KINDS = {"conv": dict(architecture="conv"), "denoising": dict(architecture="conv", noise=0.1),
         "dense": dict(architecture="dense")}
COMBINATIONS = list(itertools.product(("sigmoid", "tanh"), ("adam", "adadelta"), ("bce", "mse")))


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return copy_subset(tmp_path_factory.mktemp("study"), classes=("hat", "shoes"), per_class=4)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("activation, optimizer, loss", COMBINATIONS)
def test_each_kind_and_combination_fits_and_answers(kind, activation, optimizer, loss, tiny_folder, tmp_path):
    from pipeline.fit import fit

    config = tiny_config(**{**PIXELS, "image_size": 16, "filters": (8,)}, **KINDS[kind], output_activation=activation,
                         optimizer=optimizer, loss=loss, latent_dim=8, orientation_weight=0.0, consistency=0.0)
    fit(tiny_folder, tmp_path / "artifacts", config)
    bundle = Bundle.load(tmp_path / "artifacts")
    assert bundle.manifest.settings.architecture == KINDS[kind]["architecture"]
    assert bundle.manifest.settings.noise == KINDS[kind].get("noise", 0.0)
    assert len(bundle.manifest.history["loss"]) == 2 and all(map(math.isfinite, bundle.manifest.history["loss"]))
    query = sorted((tiny_folder / "hat").glob("*.jpg"))[1]
    results = Searcher(bundle).search_file(query, SearchOptions(n=4)).results
    assert len(results) == 4 and results[0].path == str(query) and results[0].same_image
