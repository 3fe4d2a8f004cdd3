"""What a model and its transforms need to know about a dataset (`DatasetInfo`), apart from the datasets themselves.

Its own module so that the transforms (which read it) and the datasets (which make it and use the transforms)
do not import each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DatasetInfo:
    """What a model and its transforms need to know about a dataset."""

    name: str
    classes: list[str]
    class_names: list[str]
    channels: int
    image_size: int
    style: str  # "small": pad-crop-flip at native size; "imagenet": scale augmentation, 224 crops
    root: str | None = None
    extra: dict = field(default_factory=dict, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)
