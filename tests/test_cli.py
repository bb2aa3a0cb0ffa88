"""The installed console command, ``imgsim``: its subcommands, flags made from the settings, and a run end to end."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT, TINY, copy_subset
from pipeline.config import FitConfig
from pipeline.data.images import IMAGE_EXTENSIONS

IMGSIM = Path(sys.executable).parent / "imgsim"  # installed beside the interpreter by pip install -e .


def imgsim(*args, cwd, timeout=300):
    return subprocess.run([str(IMGSIM), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def test_the_command_lists_its_subcommands(tmp_path):
    process = imgsim("--help", cwd=tmp_path)
    assert process.returncode == 0
    for name in ("fit", "predict", "add", "sync", "remove", "duplicates", "evaluate", "report", "serve", "restore",
                 "upgrade"):
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
    screen = fit.stderr.replace("\r", "\n").splitlines()
    stages = [line for line in screen if line.startswith("fit stage ")]  # the whole fit's progress, with an estimate
    assert [line.split(" (")[0] for line in stages] == [
        "fit stage 1/6: decode", "fit stage 2/6: features", "fit stage 3/6: train", "fit stage 4/6: embed",
        "fit stage 5/6: export", "fit stage 6/6: cluster+index"]
    assert all(line.endswith(" left)") for line in stages[1:])
    assert "epoch 1/2: " in " ".join(screen) and not any("epoch 1/2" in line for line in screen if "train:" in line)
    add = imgsim("add", more, "--artifacts", "bundle", cwd=work)
    assert add.returncode == 0 and "add: 3 added" in add.stdout, add.stderr
    query = sorted((more / "pants").glob("*.jpg"))[0]
    predict = imgsim("predict", "--file", query, "-n", 3, "--artifacts", "bundle", "--json", cwd=work)
    assert predict.returncode == 0, predict.stderr
    results = json.loads(predict.stdout)["results"]
    assert results[0]["path"] == str(query) and results[0]["same_image"] and len(results) == 3


@pytest.mark.parametrize("script", ["fit.py", "predict.py", "add.py", "sync.py", "remove.py", "duplicates.py",
                                    "evaluate.py", "report.py", "serve.py", "restore.py", "upgrade.py"])
def test_the_scripts_run_the_same_commands_from_any_folder(script, tmp_path):
    process = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--help"], capture_output=True,
                             text=True, cwd=tmp_path, timeout=60)
    assert process.returncode == 0 and process.stdout.startswith(f"usage: imgsim {script[:-3]} ")


def test_a_full_disk_during_a_fit_is_one_line_and_keeps_the_previous_fit(fitted_copy, tmp_path):
    import resource
    import signal

    from pipeline.bundle.layout import current_folder

    artifacts = fitted_copy
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


_REPORT_WHAT_LOADED = (  # the command, then which of the model's libraries it imported
    "import os, sys\n"
    "def end(code): raise SystemExit(code)\n"
    "os._exit = end\n"
    "from pipeline.cli import main\n"
    "try:\n    main(sys.argv[1:])\n"
    "finally:\n    print('loaded:', sorted(m for m in ('tensorflow', 'keras', 'ai_edge_litert') if m in sys.modules),"
    " file=sys.stderr)\n")


NO_FIT = ("artifacts: no fitted artifacts (looked in {cwd}/artifacts): it does not exist; fit a folder into it first "
          "(imgsim fit DATA_DIR --artifacts artifacts), or name the one a fit wrote with --artifacts DIR")


@pytest.mark.parametrize("args, message", [
    (["predict", "--url", "http://127.0.0.1:9/x.jpg", "--timeout", "-1"],
     "imgsim predict: argument --timeout: must be a finite number above 0, got -1 (see imgsim predict --help)"),
    (["predict", "--url", "http://127.0.0.1:9/x.jpg", "--timeout", "nan"],
     "imgsim predict: argument --timeout: must be a finite number above 0, got nan (see imgsim predict --help)"),
    (["predict", "--url", "http://127.0.0.1:9/x.jpg", "--timeout", "0"],
     "imgsim predict: argument --timeout: must be a finite number above 0, got 0 (see imgsim predict --help)"),
    (["predict", "--file", "q.jpg", "-n", "0"],
     "imgsim predict: argument -n: must be at least 1, got 0 (see imgsim predict --help)"),
    (["predict", "--file", "q.jpg", "-n", "-1"],
     "imgsim predict: argument -n: must be at least 1, got -1 (see imgsim predict --help)"),
    (["predict", "--file", "q.jpg", "--plot", "missing/x.png"],
     "missing/x.png: cannot write the output there (no folder {cwd}/missing)"),
    (["report", "--out", "missing/report.html"],
     "missing/report.html: cannot write the output there (no folder {cwd}/missing)"),
    (["report", "--png", "missing/figures"],
     "missing/figures: cannot write the output there (no folder {cwd}/missing)"),
    (["duplicates", "--html", "missing/groups.html"],
     "missing/groups.html: cannot write the output there (no folder {cwd}/missing)"),
    (["report", "--projector", "missing/projector"],
     "missing/projector: cannot write the output there (no folder {cwd}/missing)"),
    (["fit", "photos", "--tensorboard", "missing/runs"],
     "missing/runs: cannot write the output there (no folder {cwd}/missing)"),
    (["fit", "missing"], "missing: not a folder"),
    (["fit", "."], f".: no image files found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}, and any other file that "
                     "opens as an image)"),
    (["serve", "--port", "99999"],
     "imgsim serve: argument --port: must be at most 65535, got 99999 (see imgsim serve --help)"),
    *[(["serve", "--batch-window-ms", value], f"imgsim serve: argument --batch-window-ms: {reason}, got {value} (see "
                                               f"imgsim serve --help)")
      for value, reason in (("nan", "must be a finite number from 0"), ("inf", "must be a finite number from 0"),
                            ("1e9", "must be at most 1000"), ("-1", "must be a finite number from 0"))],
    (["predict", "--url", "http://127.0.0.1/" + "x" * 70_000],
     "http://127.0.0.1/" + "x" * 133 + "...(69,717 characters)..." + "x" * 150 + ": the URL is 70,017 characters long, "
     "over the 8,192 allowed"),
    (["predict", "--file", "q.jpg", "--box", "0.5,0.5,0.6,0.1"],
     "imgsim predict: argument --box: box 0.5,0.5,0.6,0.1 must lie inside the photo: X and Y from 0, W and H above 0, "
     "X+W and Y+H at most 1 (see imgsim predict --help)"),
    (["upgrade"], NO_FIT),
    (["report"], NO_FIT),
    (["sync"], NO_FIT),
    (["remove", "3"], NO_FIT),
    (["restore"], NO_FIT),
    (["fit", "photos", "--architecture", "dense"],
     "architecture 'dense' is for --backbone none (over a backbone the autoencoder reads its feature map)"),
])
def test_bad_input_is_one_line_and_exit_2_before_any_model_loads(tmp_path, args, message):
    process = subprocess.run([sys.executable, "-c", _REPORT_WHAT_LOADED, *args], capture_output=True, text=True,
                             cwd=tmp_path, timeout=60)
    assert process.returncode == 2 and process.stdout == ""
    assert process.stderr.splitlines() == [f"error: {message.format(cwd=tmp_path)}", "loaded: []"]
    assert list(tmp_path.iterdir()) == []  # and nothing left behind (an empty artifacts folder, say)


def test_the_version_and_every_subcommand_are_in_the_readme_and_scripts(tmp_path):
    from pipeline import __version__
    from pipeline.cli import build_parser

    process = imgsim("--version", cwd=tmp_path)
    assert process.returncode == 0 and process.stdout == f"imgsim {__version__}\n"
    readme = (ROOT / "README.md").read_text()
    commands = build_parser()._subparsers._group_actions[0].choices
    assert len(commands) == 11
    for name in commands:
        assert f"| `imgsim {name}" in readme and (ROOT / "scripts" / f"{name}.py").exists(), name


def test_a_users_tensorflow_log_level_lets_no_tensorflow_noise_through(fitted, photos, tmp_path):
    query = next(iter(sorted(photos.rglob("*.jpg"))))
    process = subprocess.run([str(IMGSIM), "predict", "--file", str(query), "-n", "2", "--runtime", "keras",
                              "--artifacts", str(fitted[0])], capture_output=True, text=True, cwd=tmp_path,
                             timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert process.returncode == 0 and process.stderr == "", process.stderr  # e.g. no "failed call to cuInit"


def test_the_fits_estimate_counts_every_stage_it_will_run():
    from pipeline.fit import stage_shares

    assert list(stage_shares(False, 100, 100)) == ["decode", "train", "embed", "export", "cluster+index"]
    beyond = stage_shares(True, 1000, 3000)  # 2,000 images beyond the training sample
    assert list(beyond) == ["decode", "features", "train", "embed", "export", "embed rest", "cluster+index"]
    assert abs(sum(beyond.values()) - 1) < 1e-9
    assert beyond["embed rest"] == pytest.approx(2 * (beyond["decode"] + beyond["features"] + beyond["embed"]))


def test_tensorboard_flags_without_tensorboard_say_how_to_get_it(monkeypatch):
    import importlib.util

    from pipeline.errors import InputError
    from pipeline.train.tensorboard import require_tensorboard

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *rest: None if name == "tensorboard" else real(name, *rest))
    with pytest.raises(InputError, match=r'^TensorBoard is not installed: pip install -e "\.\[tensorboard\]"$'):
        require_tensorboard()


def test_names_people_typed_are_shown_on_one_short_line(fitted_copy, tmp_path):
    """A path with a newline, a 5,000-character bundle name: escaped and cut, never a second line (issue 29)."""
    def imgsim(*args):
        return subprocess.run([sys.executable, "-m", "pipeline.cli", *args, "--artifacts", str(fitted_copy)],
                              capture_output=True, text=True, cwd=tmp_path, timeout=120)

    removed = imgsim("remove", str(tmp_path / "two\nlines.jpg"))
    assert removed.returncode == 2
    assert removed.stderr.splitlines() == [f"error: {tmp_path}/two\\nlines.jpg: no indexed image has this path or id; "
                                           f"nothing removed"]
    restored = imgsim("restore", "b" * 5000)
    assert restored.returncode == 2 and len(restored.stderr.splitlines()) == 1 and len(restored.stderr) < 400
    assert "...(4,920 characters)..." in restored.stderr


def test_a_query_against_an_empty_index_says_so(fitted_copy, photos, tmp_path):
    from pipeline.bundle.artifacts import Bundle
    from pipeline.collection.changes import remove_images

    remove_images([str(image_id) for image_id in Bundle.load(fitted_copy).catalog.ids], fitted_copy)
    process = subprocess.run([sys.executable, "-m", "pipeline.cli", "predict", "--file",
                              str(next(photos.rglob("*.jpg"))), "--artifacts", str(fitted_copy)],
                             capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert process.returncode == 0, process.stderr
    assert process.stdout.splitlines()[-1] == "the index holds no image"


def test_commands_that_never_run_the_encoder_never_read_an_oversized_export(fitted_copy, tmp_path):
    """remove, duplicates and restore --list beside a 3 GB export (sparse, re-hashed) stay small; predict refuses it
    unread (issue 29)."""
    import hashlib
    import json

    from pipeline.bundle.layout import current_folder

    folder = current_folder(fitted_copy)
    (folder / "encoder.tflite").unlink()
    with open(folder / "encoder.tflite", "wb") as handle:
        handle.truncate(3 * 2**30)
    digest = hashlib.sha256()
    with open(folder / "encoder.tflite", "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "export_sha256": digest.hexdigest()}))
    peak = ("import resource, subprocess, sys; process = subprocess.run(sys.argv[1:]); "
            "print(process.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    for command in (["remove", "3"], ["duplicates"], ["restore", "--list"]):
        process = subprocess.run([sys.executable, "-c", peak, sys.executable, "-m", "pipeline.cli", *command,
                                  "--artifacts", str(fitted_copy)], capture_output=True, text=True, cwd=tmp_path,
                                 timeout=300)
        code, peak_kb = map(int, process.stdout.split()[-2:])
        assert code == 0 and peak_kb < 1024 * 1024, (command, process.stdout, process.stderr)  # 3 GB if read
    refused = subprocess.run([sys.executable, "-m", "pipeline.cli", "predict", "--file", manifest["data_dir"] +
                              "/hat/" + sorted(os.listdir(manifest["data_dir"] + "/hat"))[0], "--artifacts",
                              str(fitted_copy)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert refused.returncode == 2 and refused.stderr.splitlines()[-1].endswith(
        "encoder.tflite: the encoder's export is 3,221,225,472 bytes, over the 536,870,912-byte limit of any fit's; "
        "fit again")


def test_a_folder_of_no_readable_image_is_refused_before_tensorflow_and_leaves_nothing(tmp_path):
    """Issue 33: a folder holding one fake .jpg is one line, exit 2, before any model loads; no empty artifacts folder."""
    (tmp_path / "photos" / "cats").mkdir(parents=True)
    (tmp_path / "photos" / "cats" / "a.jpg").write_text("not a photo")
    process = subprocess.run([sys.executable, "-c", _REPORT_WHAT_LOADED, "fit", "photos"], capture_output=True,
                             text=True, cwd=tmp_path, timeout=60)
    assert process.returncode == 2 and process.stdout == ""
    assert process.stderr.splitlines()[-2:] == ["error: photos: none of the 1 image files could be decoded",
                                                "loaded: []"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["photos"]
