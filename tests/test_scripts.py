"""The command-line scripts as a user runs them: output, exit codes, one-line errors."""

import json
import os
import shlex
import signal
import subprocess
import sys

import pytest

from helpers import ROOT, TINY, copy_subset
from pipeline.bundle.artifacts import Bundle
from pipeline.bundle.layout import current_folder


def run_script(name, *args, timeout=300):
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / name), *map(str, args)],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )


def tiny_flags(**overrides):
    settings = {"image-size": TINY["image_size"], "latent-dim": TINY["latent_dim"], "epochs": TINY["epochs"],
                "batch-size": TINY["batch_size"], **overrides}
    return [part for key, value in settings.items() for part in (f"--{key}", value)]


def last_line(process):
    return process.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def messy_fit(tmp_path_factory):
    """fit.py on real photos mixed with an empty, a truncated and a non-image file."""
    data = copy_subset(tmp_path_factory.mktemp("messy"), classes=("hat", "shoes"), per_class=6)
    (data / "hat" / "empty.jpg").write_bytes(b"")
    (data / "hat" / "notes.png").write_text("not an image")
    good = sorted((data / "shoes").glob("*.jpg"))[0]
    (data / "shoes" / "truncated.jpg").write_bytes(good.read_bytes()[:2000])
    artifacts = tmp_path_factory.mktemp("messy-artifacts")
    process = run_script("fit.py", data, "--artifacts", artifacts, "--clusters", "3", *tiny_flags())
    return data, artifacts, process


def test_fit_skips_and_lists_bad_files(messy_fit):
    data, artifacts, process = messy_fit
    assert process.returncode == 0, process.stderr
    assert "fitted 12 images (3 skipped)" in process.stdout and f"artifacts: {artifacts}" in process.stdout
    bundle = Bundle.load(artifacts)
    assert {os.path.basename(s["path"]): s["reason"].split(" (")[0] for s in bundle.manifest.skipped} == {
        "empty.jpg": "empty file",
        "notes.png": "not a decodable image",
        "truncated.jpg": "cannot decode image",
    }
    assert bundle.index.nlist == 3


def test_predict_json_by_file(messy_fit):
    data, artifacts, _ = messy_fit
    query = sorted((data / "hat").glob("*.jpg"))[0]
    process = run_script("predict.py", "--file", query, "-n", 4, "--artifacts", artifacts, "--json", "--expansion", 0)
    assert process.returncode == 0, process.stderr
    output = json.loads(process.stdout)
    assert output["query"] == str(query) and len(output["clusters"]) == output["nprobe"] and output["expansion"] == 0
    results = output["results"]
    assert len(results) == 4 and results[0]["path"] == str(query) and results[0]["distance"] < 1e-5
    assert [r["rank"] for r in results] == [1, 2, 3, 4]
    assert all({"rank", "path", "score", "distance", "query_distance", "cluster", "label"} <= set(r) for r in results)
    assert [r["score"] for r in results] == sorted(r["score"] for r in results)
    assert list(results[0]).index("score") < list(results[0]).index("distance")  # the number they are in the order of


def test_predict_results_are_sorted_by_the_number_shown_with_expansion(messy_fit):
    data, artifacts, _ = messy_fit
    query = sorted((data / "shoes").glob("*.jpg"))[2]
    process = run_script("predict.py", "--file", query, "-n", 8, "--artifacts", artifacts, "--expansion", 3)
    assert process.returncode == 0, process.stderr
    lines = [line for line in process.stdout.splitlines() if line.strip()[:1].isdigit()]
    shown = [float(line.split()[1]) for line in lines]
    assert len(lines) == 8 and shown[0] == 0.0 and lines[0].endswith("(same image as the query)")
    assert lines[1].endswith("(nearest to the query itself: kept first)")  # ranked by its distance to the query
    assert shown == sorted(shown)  # every row in the order of the first number shown, its score (issue 31)
    ranked_by = [float(line.split()[2]) for line in lines]
    assert shown[2:] == ranked_by[2:] and shown[1] == min(ranked_by[1], ranked_by[2])


def test_predict_table_and_plot(messy_fit, tmp_path):
    data, artifacts, _ = messy_fit
    query = sorted((data / "shoes").glob("*.jpg"))[1]
    plot = tmp_path / "montage.png"
    process = run_script("predict.py", "--file", query, "-n", 3, "--artifacts", artifacts, "--plot", plot,
                         "--exclude-self", "--nprobe", "all")
    assert process.returncode == 0, process.stderr
    lines = process.stdout.splitlines()
    assert lines[0].startswith(f"query {query}: nprobe 3") and lines[1].split()[:6] == ["rank", "score", "distance", "to", "query", "cluster"]
    rows = [line for line in lines if line.strip()[:1].isdigit()]
    assert len(rows) == 3 and not any(str(query) in row for row in rows)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000


def test_predict_max_distance_returns_only_results_that_close(messy_fit):
    data, artifacts, _ = messy_fit
    query = sorted((data / "hat").glob("*.jpg"))[0]
    everything = json.loads(run_script("predict.py", "--file", query, "-n", 12, "--artifacts", artifacts,
                                       "--json").stdout)["results"]
    limit = sorted(hit["query_distance"] for hit in everything)[3]
    process = run_script("predict.py", "--file", query, "-n", 12, "--artifacts", artifacts, "--max-distance", limit,
                         "--json")
    close = json.loads(process.stdout)["results"]
    assert [hit["path"] for hit in close] == [hit["path"] for hit in everything if hit["query_distance"] <= limit]
    assert 1 <= len(close) < 12 and [hit["rank"] for hit in close] == list(range(1, len(close) + 1))
    process = run_script("predict.py", "--file", query, "--artifacts", artifacts, "--max-distance", 0, "--exclude-self")
    assert process.returncode == 0 and "no indexed image within distance 0.0 of the query" in process.stdout
    process = run_script("predict.py", "--file", query, "--artifacts", artifacts, "--max-distance", "-1")
    assert process.returncode == 2 and process.stderr.strip().splitlines() == [
        "error: imgsim predict: argument --max-distance: must be a finite number from 0, got -1 (see imgsim predict --help)"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--file", "{data}/nope.jpg"], "{data}/nope.jpg: no such file"),
        (["--file", "{data}/hat/notes.png"], "{data}/hat/notes.png: not a decodable image"),
        (["--url", "{url}/missing.jpg"], "{url}/missing.jpg: HTTP 404"),
        (["--url", "{url}/page.html"], "{url}/page.html: not an image (content type text/html)"),
        (["--url", "{url}/slow", "--timeout", "1"], "{url}/slow: timed out after 1 s"),
        (["--url", "ftp://example.org/x.jpg"], "ftp://example.org/x.jpg: only http and https"),
    ],
    ids=["missing-file", "non-image-file", "url-404", "url-html", "url-timeout", "url-scheme"],
)
def test_predict_bad_input_is_one_line_and_exit_2(messy_fit, http_url, args, message):
    data, artifacts, _ = messy_fit
    args = [a.format(data=data, url=http_url) for a in args]
    process = run_script("predict.py", *args, "--artifacts", artifacts)
    assert process.returncode == 2
    assert last_line(process).startswith("error: " + message.format(data=data, url=http_url))
    assert "Traceback" not in process.stderr


@pytest.mark.parametrize("query", ["--file={data}/nope.jpg", "--url={url}/missing.jpg"], ids=["missing-file", "url-404"])
def test_predict_errors_are_exactly_one_line_on_stderr(messy_fit, http_url, query):
    data, artifacts, _ = messy_fit
    process = run_script("predict.py", query.format(data=data, url=http_url), "--artifacts", artifacts)
    assert process.returncode == 2 and process.stdout == ""
    assert len(process.stderr.splitlines()) == 1 and process.stderr.startswith("error: ")  # no TensorFlow lines


def test_predict_into_a_pipe_closed_early_stops_quietly(messy_fit, tmp_path):
    data, artifacts, _ = messy_fit
    errors = tmp_path / "stderr.txt"
    query = sorted((data / "shoes").glob("*.jpg"))[0]  # a good photo of the fit
    # `true` exits at once, so every write of the JSON meets a closed pipe, as after `| head -1`
    predict = [sys.executable, ROOT / "scripts" / "predict.py", "--file", query, "--artifacts", artifacts, "--json"]
    command = f"{shlex.join(map(str, predict))} 2> {shlex.quote(str(errors))} | true"
    subprocess.run(["bash", "-c", command], timeout=300, check=True)
    assert errors.read_text() == ""  # no "error: Broken pipe", no traceback


def test_predict_without_artifacts_is_a_clear_error(tmp_path):
    query = sorted((ROOT / "data" / "sample" / "hat").glob("*.jpg"))[0]
    process = run_script("predict.py", "--file", query, "--artifacts", tmp_path / "none")
    assert process.returncode == 2
    assert last_line(process) == (f"error: {tmp_path / 'none'}: no fitted artifacts: it does not exist; fit a folder into "
                                  f"it first (imgsim fit DATA_DIR --artifacts {tmp_path / 'none'}), or name the one a "
                                  f"fit wrote with --artifacts DIR")


def test_fit_of_an_empty_folder_is_exit_2_and_keeps_the_old_fit(messy_fit, tmp_path):
    _, artifacts, _ = messy_fit
    before = current_folder(artifacts)
    (tmp_path / "empty").mkdir()
    process = run_script("fit.py", tmp_path / "empty", "--artifacts", artifacts)
    assert process.returncode == 2
    assert last_line(process).startswith(f"error: {tmp_path / 'empty'}: no image files found")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.jpg").write_text("nope")
    process = run_script("fit.py", tmp_path / "junk", "--artifacts", artifacts)
    assert process.returncode == 2 and "none of the 1 image files could be decoded" in last_line(process)
    assert current_folder(artifacts) == before and not list(artifacts.glob(".staging-*"))


def test_an_interrupted_fit_keeps_the_old_artifacts(messy_fit, tmp_path):
    data, artifacts, _ = messy_fit
    before = current_folder(artifacts)
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "fit.py"), str(data), "--artifacts", str(artifacts),
         *map(str, tiny_flags(epochs=500))],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
    )
    try:
        for line in process.stdout:  # wait until training is under way, then kill without warning
            if "epoch 2/" in line:  # the log line of the first finished epoch
                break
        assert list(artifacts.glob(".staging-*")), "the fit should be writing into a staging folder"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.kill()
    assert current_folder(artifacts) == before
    predict = run_script("predict.py", "--file", sorted((data / "hat").glob("*.jpg"))[0], "-n", 2,
                         "--artifacts", artifacts, "--json")
    assert predict.returncode == 0 and len(json.loads(predict.stdout)["results"]) == 2


@pytest.mark.parametrize(
    "query, message",
    [
        (["--file", "{data}/nope.jpg"], "{data}/nope.jpg: no such file"),
        (["--file", "{data}/hat"], "{data}/hat: is a folder, not an image file"),
        (["--url", "ftp://example.org/x.jpg"], "ftp://example.org/x.jpg: only http and https"),
        (["--url", "http://[::1"], "http://[::1: not a valid URL"),
    ],
    ids=["missing-file", "a-folder", "url-scheme", "malformed-url"],
)
def test_predict_checks_its_input_before_it_loads_a_model(messy_fit, tmp_path, query, message):
    """The bundle's Keras encoder is broken here: an error about the query, not about the model, shows that
    the query was looked at first."""
    import shutil

    data, artifacts, _ = messy_fit
    broken = tmp_path / "artifacts"
    shutil.copytree(artifacts, broken)
    (current_folder(broken) / "encoder.keras").write_bytes(b"not a model")
    process = run_script("predict.py", *[part.format(data=data) for part in query], "--artifacts", broken,
                         "--runtime", "keras")
    assert process.returncode == 2 and process.stderr.splitlines() == [
        process.stderr.splitlines()[0]] and process.stderr.startswith("error: " + message.format(data=data))
    good = sorted((data / "hat").glob("*.jpg"))[0]  # and a good query meets the broken model, as it should
    assert "cannot load the model" in last_line(run_script("predict.py", "--file", good, "--artifacts", broken,
                                                           "--runtime", "keras"))


def test_predict_with_several_photos_and_an_unlike_one(messy_fit):
    data, artifacts, _ = messy_fit
    hats, shoe = sorted((data / "hat").glob("*.jpg"))[:2], sorted((data / "shoes").glob("*.jpg"))[0]
    process = run_script("predict.py", "--file", hats[0], "--file", hats[1], "--unlike", shoe, "-n", 4, "--artifacts",
                         artifacts, "--json")
    assert process.returncode == 0, process.stderr
    output = json.loads(process.stdout)
    assert output["query"] == f"{hats[0]} + {hats[1]} - {shoe}" and len(output["results"]) == 4
    assert output["combined"] == "the mean of 2 photos' unit descriptors, less 0.5 times the mean of 1 unlike photos'"
    table = run_script("predict.py", "--file", hats[0], "--file", hats[1], "--artifacts", artifacts)
    assert table.returncode == 0 and "one query from the mean of 2 photos' unit descriptors" in table.stdout
