"""The fitted encoder exported for LiteRT (TensorFlow's own inference runtime), and checked.

A fit saves its encoder as a Keras model and, with :func:`export_litert`, as a LiteRT flatbuffer
of builtin ops only (no Flex ops, which would need TensorFlow at run time), which every command but
the fit runs (:mod:`pipeline.model.runtime`). The export takes uint8 images, as they come out of the
decoder, and computes :func:`encoder_outputs`: the descriptor, each of its blocks, and the
backbone's feature map averaged over positions (the baseline that ``evaluate`` reports).
:func:`check_export` compares the export's descriptors of real images with the ones the Keras
models gave them before a fit commits; a few of those images are kept in the bundle as its probes
(:func:`pipeline.bundle.artifacts.save_probes`). With a fit's ``precision`` "int8", the backbone's ops are
quantized (:func:`_with_int8_backbone`) and the export is checked to a looser bound (INT8_MEDIAN_COSINE).
This module imports TensorFlow: only a fit and ``imgsim upgrade`` use it.
"""

from __future__ import annotations

import re
import tempfile
import warnings
from pathlib import Path
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from ..bundle.artifacts import Bundle, row_cosines, save_probes
from ..bundle.layout import EXPORT, PROBE_IMAGES
from ..bundle.manifest import FORMAT_VERSION
from ..bundle.writer import ArtifactWriter
from ..errors import ArtifactError
from ..model.backbone import keras_name, model_name
from ..model.resize import AreaResize
from ..model.runtime import encoder_outputs
from ..quiet import native_stderr_silenced

CHECK_IMAGES = 64  # images of its own that a fit compares the export on
MIN_COSINE = 0.99999  # the export's descriptor of each of them against the one Keras gave it
# With an int8 backbone, the median over those images: the quantization moves some images far more than others
# (the medians of the dev sets 0.948 to 0.996, cifar10-test's worst image 0.68, docs/QUALITY.md), and one gone
# wrong moves them all (its ranges measured on gray images: a mean of 0.14).
INT8_MEDIAN_COSINE = 0.9
CALIBRATION_IMAGES = 256  # the fit's own images whose activations set the int8 backbone's ranges


def litert_ready(encoder: keras.Model) -> keras.Model:
    """``encoder``, or for an encoder saved before format 6 a copy that LiteRT can run: its area
    resizing as :class:`AreaResize` (TensorFlow's ResizeArea is no LiteRT op) and its layers
    renamed without a leading underscore (which TensorFlow's SavedModel refuses)."""

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        config["name"] = keras_name(config["name"])
        if isinstance(layer, keras.layers.Resizing) and layer.interpolation == "area":
            return AreaResize(layer.height, name=config["name"])
        return layer.__class__.from_config(config)

    def outdated(model: keras.Model) -> bool:
        return any(layer.name.startswith("_") or isinstance(layer, keras.layers.Resizing)
                   or (isinstance(layer, keras.Model) and outdated(layer)) for layer in model.layers)

    if not outdated(encoder):
        return encoder
    copy = keras.models.clone_model(encoder, clone_function=clone, recursive=True)
    copy.set_weights(encoder.get_weights())
    return copy


def export_litert(encoder: keras.Model, path: str | Path, int8_backbone: Optional[str] = None,
                  calibration: Optional[np.ndarray] = None) -> None:
    """Write ``encoder`` (image -> descriptor) as a LiteRT flatbuffer at ``path``: uint8 images
    (batch, size, size, 3) in, :func:`encoder_outputs` out, builtin ops only; with ``int8_backbone``
    (the backbone's name), that backbone in int8, its ranges measured on ``calibration`` (uint8
    images). ArtifactError when an op has no builtin counterpart."""
    wrapper = _taking_uint8(encoder_outputs(litert_ready(encoder)))
    with tempfile.TemporaryDirectory() as scratch, native_stderr_silenced():  # the converter's own notices
        try:
            if int8_backbone:
                with warnings.catch_warnings():  # the quantizer runs TensorFlow's deprecated copy of the interpreter
                    warnings.simplefilter("ignore")
                    exported = _with_int8_backbone(wrapper, int8_backbone, calibration, Path(scratch))
            else:
                exported = _builtin_ops(wrapper, Path(scratch))
        except Exception as exc:  # the converter raises assorted types; its message names the op
            raise ArtifactError(f"{path}: cannot export the encoder for LiteRT ({str(exc).strip().splitlines()[-1]})"
                                ) from None
    Path(path).write_bytes(exported)


def exported_model(model: keras.Model) -> bytes:
    """``model`` (float images in [0, 1] in) as a LiteRT flatbuffer of builtin ops taking uint8 images,
    as a fit exports its encoder (``imgsim duplicates DIR`` runs the pretrained backbone so)."""
    with tempfile.TemporaryDirectory() as scratch, native_stderr_silenced():
        return _builtin_ops(_taking_uint8(model), Path(scratch))


def _taking_uint8(model: keras.Model) -> keras.Model:
    """``model`` behind a rescaling of uint8 images, as they come out of the decoder, to [0, 1]."""
    image = keras.Input(model.input_shape[1:], dtype="uint8", name="image")
    return keras.Model(image, model(keras.layers.Rescaling(1 / 255, name="to_unit_range")(image)))


def _builtin_ops(wrapper: keras.Model, scratch: Path) -> bytes:
    """``wrapper`` converted for LiteRT, builtin ops only (no Flex ops, which need TensorFlow to run)."""
    wrapper.export(str(scratch / "model.tflite"), format="litert", verbose=False,
                   target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]})
    return (scratch / "model.tflite").read_bytes()


def _with_int8_backbone(wrapper: keras.Model, backbone: str, calibration: np.ndarray, scratch: Path) -> bytes:
    """``wrapper`` as a LiteRT flatbuffer whose backbone ops compute in int8 (static quantization:
    each activation's range measured on ``calibration``) and every other op in float: the
    converter's selective quantization, with the nodes outside the backbone denylisted (a
    quantized head loses precision, and its normalising division cannot run in int8). The
    backbone's last convolution stays float too: its output is the export's ``feature_map``,
    named as an output rather than inside the backbone's name scope."""
    wrapper.export(str(scratch / "saved"), format="tf_saved_model", verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(scratch / "saved"))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    inside = re.compile(rf"/{re.escape(model_name(backbone))}(_\d+)?/")
    head = [name for name in _node_names(converter.convert()) if not inside.search(name)]

    def samples():
        for image in calibration:
            yield [image[None]]

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = samples
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=samples,
        debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=head))
    return debugger.get_nondebug_quantized_model()


def _node_names(model: bytes) -> list[str]:
    """The output tensor name of each op of a LiteRT ``model`` (how the converter names its nodes)."""
    interpreter = tf.lite.Interpreter(model_content=model)
    names = {tensor["index"]: tensor["name"] for tensor in interpreter.get_tensor_details()}
    return [names[op["outputs"][0]] for op in interpreter._get_ops_details()]


def check_export(exported, images: np.ndarray, expected: np.ndarray, path: str | Path, int8: bool = False) -> float:
    """How near the descriptors of ``images`` (uint8) from ``exported`` (a
    :class:`pipeline.model.runtime.LiteRTEncoder`) are to ``expected``, the ones the Keras models gave
    them: the smallest cosine, or for an ``int8`` backbone the median; ArtifactError naming
    ``path`` when it is under MIN_COSINE (INT8_MEDIAN_COSINE)."""
    cosines = row_cosines(exported.encode(images), expected)
    if int8:
        median = float(np.median(cosines))
        if not median >= INT8_MEDIAN_COSINE:  # also catches nan
            raise ArtifactError(f"{path}: the int8 export differs from the Keras encoder (median cosine {median:.4f} "
                                f"over {len(images)} images, at least {INT8_MEDIAN_COSINE} expected); nothing was "
                                f"written")
        return median
    cosine = float(cosines.min()) if np.isfinite(cosines).all() else np.nan
    if not cosine >= MIN_COSINE:  # also catches nan
        raise ArtifactError(f"{path}: the LiteRT export differs from the Keras encoder (cosine {cosine:.7f} on one of "
                            f"{len(images)} images, at least {MIN_COSINE} expected); nothing was written")
    return cosine


def spread_rows(count: int, wanted: int) -> np.ndarray:
    """Up to ``wanted`` rows of ``count``, evenly spread over them."""
    return np.unique(np.linspace(0, count - 1, min(wanted, count)).astype(int))


def probe_rows(count: int) -> np.ndarray:
    """Which of ``count`` checked images become a bundle's probe images: spread over them."""
    return spread_rows(count, PROBE_IMAGES)


def upgrade(artifacts_dir: str | Path) -> tuple[Path, bool]:
    """Bring a bundle of an older format to the current one (``imgsim upgrade``): add the LiteRT
    export to a bundle made before format 6, and the probe images to one made before format 7,
    both checked against the stored descriptors of up to CHECK_IMAGES of its indexed images, as a fit
    checks its own; the bundle's folder, and whether it changed (a current bundle is left as it is)."""
    import hashlib

    from ..model.runtime import LiteRTEncoder

    with ArtifactWriter(artifacts_dir) as writer:
        bundle = Bundle.load(artifacts_dir)
        if bundle.manifest.format_version == FORMAT_VERSION:
            return bundle.folder, False
        images, rows = _as_indexed(bundle)
        expected = np.asarray(bundle.embeddings)[rows]
        if bundle.exported:
            check_export(bundle.encoder("litert"), images, expected, bundle.folder / EXPORT)
        else:
            path = writer.path / EXPORT
            export_litert(bundle.keras_encoder(), path)
            check_export(LiteRTEncoder(path.read_bytes()), images, expected, path)
            bundle.manifest.export_sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        probes = probe_rows(len(rows))
        save_probes(writer.path, images[probes], expected[probes], [bundle.catalog.hashes[rows[i]] for i in probes])
        bundle.manifest.format_version = FORMAT_VERSION
        return bundle.save(writer), True


def _as_indexed(bundle: Bundle) -> tuple[np.ndarray, list[int]]:
    """Up to CHECK_IMAGES indexed images decoded as they were indexed (their files unchanged since),
    and their catalog rows; ArtifactError when none can be."""
    from ..data.dataset import load_image
    from ..data.images import ImageRecord

    images, rows = [], []
    for row, (image_path, digest) in enumerate(zip(bundle.catalog.paths, bundle.catalog.hashes)):
        loaded = load_image(ImageRecord(image_path, None), bundle.settings.image_size, bundle.settings.max_file_bytes)
        if isinstance(loaded, tuple) and loaded[1] == digest:  # the image as it was indexed
            images.append(loaded[0])
            rows.append(row)
        if len(images) == CHECK_IMAGES:
            break
    if not images:
        raise ArtifactError(f"{bundle.folder}: none of the indexed images can be read as they were indexed, to check "
                            f"the encoder; nothing was written")
    return np.stack(images), rows
