"""The installed console command, ``imgsim``: its subcommands, flags made from the settings, and a run end to end."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TINY, copy_subset
from pipeline.config import FitConfig

IMGSIM = Path(sys.executable).parent / "imgsim"  # installed beside the interpreter by pip install -e .


def imgsim(*args, cwd, timeout=300):
    return subprocess.run([str(IMGSIM), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def test_the_command_lists_its_subcommands(tmp_path):
    process = imgsim("--help", cwd=tmp_path)
    assert process.returncode == 0
    for name in ("fit", "predict", "add", "sync", "remove", "duplicates", "evaluate", "report", "serve"):
        assert f"\n    {name} " in process.stdout or f"\n    {name}\n" in process.stdout


def test_fit_has_a_flag_for_every_setting_with_its_default(tmp_path):
    text = " ".join(imgsim("fit", "--help", cwd=tmp_path).stdout.split())  # unwrapped
    for field in dataclasses.fields(FitConfig):
        assert f"--{field.name.replace('_', '-')}" in text
    assert "--latent-dim LATENT_DIM size of the learned latent and of each descriptor block after PCA (default: 128)" in text
    assert ("(default: 224 with efficientnet-lite0, 240 with efficientnet-lite1, 260 with efficientnet-lite2, 64 with none)"
            in text)  # a default that depends on the backbone
    assert "--flip-augment, --no-flip-augment" in text and "--nprobe NPROBE" in text


def test_a_usage_error_is_one_line_and_exit_2(tmp_path):
    process = imgsim("fit", tmp_path, "--epochs", "0", cwd=tmp_path)
    assert process.returncode == 2 and process.stdout == ""
    assert process.stderr.splitlines() == [
        "error: imgsim fit: argument --epochs: expected a positive integer or one of auto, got '0' "
        "(see imgsim fit --help)"]


def test_fit_add_and_predict_end_to_end_from_another_folder(tmp_path):
    data = copy_subset(tmp_path / "photos", classes=("hat", "shoes"), per_class=6)
    more = copy_subset(tmp_path / "more", classes=("pants",), per_class=3)
    work = tmp_path / "elsewhere"
    work.mkdir()
    flags = ["--image-size", TINY["image_size"], "--latent-dim", TINY["latent_dim"], "--epochs", TINY["epochs"],
             "--batch-size", TINY["batch_size"], "--no-flip-augment"]
    fit = imgsim("fit", data, "--artifacts", "bundle", *flags, cwd=work)
    assert fit.returncode == 0, fit.stderr
    assert "fitted 12 images (0 skipped)" in fit.stdout and (work / "bundle" / "CURRENT").exists()
    add = imgsim("add", more, "--artifacts", "bundle", cwd=work)
    assert add.returncode == 0 and "add: 3 added" in add.stdout, add.stderr
    query = sorted((more / "pants").glob("*.jpg"))[0]
    predict = imgsim("predict", "--file", query, "-n", 3, "--artifacts", "bundle", "--json", cwd=work)
    assert predict.returncode == 0, predict.stderr
    results = json.loads(predict.stdout)["results"]
    assert results[0]["path"] == str(query) and results[0]["same_image"] and len(results) == 3


@pytest.mark.parametrize("script", ["fit.py", "predict.py", "add.py", "sync.py", "remove.py", "duplicates.py",
                                    "evaluate.py", "report.py", "serve.py"])
def test_the_scripts_run_the_same_commands_from_any_folder(script, tmp_path):
    process = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--help"], capture_output=True,
                             text=True, cwd=tmp_path, timeout=60)
    assert process.returncode == 0 and process.stdout.startswith(f"usage: imgsim {script[:-3]} ")


def test_a_full_disk_during_a_fit_is_one_line_and_keeps_the_previous_fit(fitted, tmp_path):
    import resource
    import shutil
    import signal

    from pipeline.artifacts import current_folder

    artifacts = tmp_path / "artifacts"
    shutil.copytree(fitted[0], artifacts)
    before = current_folder(artifacts)
    data = copy_subset(tmp_path / "photos", classes=("hat",), per_class=4)

    def small_disk():  # writes past 100 KB fail as on a full disk (EFBIG instead of a signal)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    process = subprocess.run([str(IMGSIM), "fit", str(data), "--artifacts", str(artifacts), "--epochs", "1"],
                             capture_output=True, text=True, cwd=tmp_path, timeout=300, preexec_fn=small_disk)
    assert process.returncode == 2
    errors = [line for line in process.stderr.replace("\r", "\n").splitlines() if line.startswith("error")]
    assert errors == [f"error: {artifacts}: cannot write artifacts there (File too large); the previous bundle is unchanged"]
    assert "Traceback" not in process.stderr and current_folder(artifacts) == before


def test_serve_takes_its_write_token_from_a_file_never_the_command_line(fitted, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("s3cret\n")
    process = imgsim("serve", "--artifacts", fitted[0], "--write-token-file", short, cwd=tmp_path, timeout=60)
    assert process.returncode == 2 and process.stderr.splitlines() == [
        "error: the write token must be at least 16 characters long"]
    process = imgsim("serve", "--artifacts", fitted[0], "--write-token", "a-token-of-enough-length", cwd=tmp_path)
    assert process.returncode == 2 and "unrecognized arguments: --write-token" in process.stderr
