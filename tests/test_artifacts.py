"""Atomic commits and clear errors for missing, partial or foreign artifacts."""

import json
import os

import pytest

from pipeline.artifacts import FORMAT_VERSION, REQUIRED_FILES, ArtifactWriter, current_fit
from pipeline.errors import ArtifactError


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
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["CURRENT", good.name])


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
    os.remove(fit_dir / "index.joblib")
    with pytest.raises(ArtifactError, match="incomplete artifacts, missing index.joblib"):
        current_fit(tmp_path)
    (fit_dir / "index.joblib").write_text("x")
    (fit_dir / "manifest.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(ArtifactError, match="format version 99"):
        current_fit(tmp_path)
    (fit_dir / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="unreadable manifest"):
        current_fit(tmp_path)
