"""Bounds on what a model file may declare, checked before anything is built from it.

Torch-free and apart from the card and the ``.pt`` format, so both use them without one
depending on the other (a card edit must not rerun the training stages that read ``.pt``).
"""

MAX_SIDE = 8192  # pixels: predict resizes every image to the card's size; a Resize is side x side
MAX_CLASSES = 100_000
MAX_CHANNELS = 64
