"""A long stream of batch inputs for the engines' tests: it counts how many the engine has drawn."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path


class CountedInputs:
    """``count`` tasks (photo, output folder ``folder/pNNNNNN``, no video), cycling through ``photos``;
    ``taken`` is how many have been drawn so far."""

    def __init__(self, photos: Sequence[Path], folder: Path, count: int = 100_000) -> None:
        self.photos, self.folder, self.count = list(photos), folder, count
        self.taken = 0

    def __iter__(self) -> Iterator[tuple[Path, Path, None]]:
        for i in range(self.count):
            self.taken += 1
            yield self.photos[i % len(self.photos)], self.folder / f"p{i:06d}", None
