"""Where the fitted encoder's time goes: each part of it exported alone for LiteRT and timed.

    python benchmarks/bench_encoder_parts.py --artifacts DIR [--batch 8] [--rounds 9] [--threads 2] [--before FILE]
                                             [--int8]

Takes a fit's Keras encoder and exports, as a fit exports the whole (uint8 images in, builtin
LiteRT ops only): the whole encoder with every output (what commands run), the descriptor alone,
the backbone alone (its feature map), the backbone with the latent, and each histogram block alone.
Each runs on LiteRT (XNNPACK, ``--threads``) at ``--batch`` images a call, the parts in turn round
after round; prints the median images a second of ``--rounds`` calls of each and the milliseconds
an image, and writes docs/BENCHMARKS.md.
The head's cost is the whole's time less the backbone's (issue 33: whole >= 0.8x the backbone alone).
``--before``: the ``encoder.tflite`` of a fit made by earlier code, timed in the same rounds (an A/B of the code).
``--int8``: the whole encoder exported as ``fit --precision int8`` exports it (its backbone quantized, calibrated
on up to 256 of the bundle's images), timed in the same rounds (issue 33: >= 1.5x fp32's images/s).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.report import machine, write_section  # noqa: E402
from pipeline.bundle.artifacts import Bundle  # noqa: E402


def exported(model, size: int, folder: Path, name: str) -> bytes:
    """``model`` (float images in [0, 1]) as a LiteRT flatbuffer taking uint8 images, as a fit exports."""
    import keras
    import tensorflow as tf

    image = keras.Input((size, size, 3), dtype="uint8", name="image_u8")
    outputs = model(keras.layers.Rescaling(1 / 255)(image))
    wrapper = keras.Model(image, outputs if isinstance(outputs, dict) else {"out": outputs})
    path = folder / f"{name}.tflite"
    wrapper.export(str(path), format="litert", verbose=False,
                   target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]})
    return path.read_bytes()


def runner(model: bytes, threads: int):
    """A LiteRT signature runner of ``model`` and the name of its input."""
    from ai_edge_litert.interpreter import Interpreter

    signature = Interpreter(model_content=model, num_threads=threads).get_signature_runner()
    return signature, next(iter(signature.get_input_details()))


def images_per_second(runners: list, size: int, batch: int, rounds: int) -> list[float]:
    """The median images a second of each runner, timed in turn round after round (so that every part
    meets the same moments of a shared machine)."""
    images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    times: list[list[float]] = [[] for _ in runners]
    for round_number in range(rounds + 2):
        for (signature, name), spent in zip(runners, times):
            started = time.perf_counter()
            signature(**{name: images})
            if round_number >= 2:  # the first two plan the memory and warm the caches
                spent.append(time.perf_counter() - started)
    return [batch / statistics.median(spent) for spent in times]


def int8_export(bundle: Bundle, encoder) -> bytes:
    """``encoder`` exported as ``fit --precision int8`` exports it, calibrated on up to 256 of ``bundle``'s images."""
    from pipeline.data.dataset import load_image
    from pipeline.train.export import CALIBRATION_IMAGES, export_litert, spread_rows
    from pipeline.data.images import ImageRecord

    size = bundle.settings.image_size
    paths = [bundle.catalog.paths[row] for row in spread_rows(len(bundle.catalog), CALIBRATION_IMAGES)]
    images = np.stack([load_image(ImageRecord(path, None), size, bundle.settings.max_file_bytes)[0] for path in paths])
    with tempfile.TemporaryDirectory() as scratch:
        export_litert(encoder, Path(scratch) / "int8.tflite", bundle.settings.backbone, images)
        return (Path(scratch) / "int8.tflite").read_bytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", required=True)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--before", type=Path, help="an encoder.tflite exported by earlier code, timed beside")
    parser.add_argument("--before-code", default="earlier code", help="which code exported --before (said in the table)")
    parser.add_argument("--int8", action="store_true", help="also the whole encoder with its backbone in int8")
    args = parser.parse_args()
    import keras

    from pipeline.model.runtime import block_tensors, encoder_outputs

    bundle = Bundle.load(args.artifacts)
    encoder = bundle.keras_encoder()
    size = encoder.input_shape[1]
    blocks = block_tensors(encoder)
    parts = {"whole encoder, every output (what commands run)": encoder_outputs(encoder),
             "the descriptor alone": encoder,
             "backbone alone (its feature map)": keras.Model(encoder.input, encoder.get_layer("feature_map").output),
             **{f"the {name} block alone" + (" (backbone and autoencoder)" if name == "latent" else ""):
                keras.Model(encoder.input, tensor) for name, tensor in blocks.items()}}
    with tempfile.TemporaryDirectory() as scratch:
        runners = [runner(exported(model, size, Path(scratch), f"part{number}"), args.threads)
                   for number, model in enumerate(parts.values())]
    before = f"whole encoder, every output, as {args.before_code} exported it (`--before`)"
    int8 = "whole encoder, every output, its backbone in int8 (`--precision int8`)"
    if args.before:
        parts[before] = None
        runners.append(runner(args.before.read_bytes(), args.threads))
    if args.int8:
        parts[int8] = None
        runners.append(runner(int8_export(bundle, encoder), args.threads))
    rows = list(zip(parts, images_per_second(runners, size, args.batch, args.rounds)))
    speed = dict(rows)
    whole, backbone = rows[0][1], rows[2][1]
    summary = (f"The whole encoder runs at {whole / backbone:.2f}x the backbone alone; the head costs "
               f"{1000 / whole - 1000 / backbone:.2f} ms an image of {1000 / whole:.2f}.")
    if args.before:
        summary += (f" The earlier code's export: {speed[before] / backbone:.2f}x the backbone, now {whole / speed[before]:.2f}x "
                    f"its speed.")
    if args.int8:
        summary += f" With the backbone in int8: {speed[int8]:.1f} images/s, {speed[int8] / whole:.2f}x fp32's."
    lines = ["| part | images/s | ms an image |", "|---|---|---|",
             *(f"| {name} | {rate:.1f} | {1000 / rate:.2f} |" for name, rate in rows), "", summary]
    print("\n".join(lines))
    write_section("encoder_parts", "## Where the encoder's time goes\n\n"
                  f"`python benchmarks/bench_encoder_parts.py --artifacts DIR --batch {args.batch} --threads "
                  f"{args.threads}{' --before FILE' if args.before else ''}{' --int8' if args.int8 else ''}` ({machine()}; a default fit of the sample, {size} px, each part exported alone "
                  f"as a fit exports the whole, LiteRT, the parts in turn, median of {args.rounds} calls of {args.batch} images each).\n\n"
                  + "\n".join(lines))


if __name__ == "__main__":
    main()
