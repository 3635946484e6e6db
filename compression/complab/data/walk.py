"""Walking a user's dataset folder in bounded time: symlink cycles refused, at most MAX_FILES entries read.

A dataset folder is untrusted (README, "Trust"): a link such as `cls0/a -> ..` makes `os.walk(followlinks=True)`
(what torchvision's ImageFolder and `Path.rglob` do) read the same folders forever while memory grows. Every
walk over a dataset folder goes through `walk_files`, which follows directory links (class folders are often
links to where the images really are) but remembers each folder it entered by (st_dev, st_ino): a folder reached
a second time is a DataLoadError naming the link, and so is a folder holding more than MAX_FILES entries.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from complab.errors import DataLoadError

# The most files and folders one walk reads (ImageNet's training set is 1.28 M images: point at a split).
MAX_FILES = 1_000_000


class FolderWalk:
    """One bounded walk over a dataset (shared by its class folders): the folders seen and the entries counted."""

    def __init__(self, top: str | Path, what: str = "image folder", limit: int | None = None) -> None:
        self.top = Path(top)
        self.what = what
        self.limit = MAX_FILES if limit is None else limit
        self.count = 0
        self.seen: set[tuple[int, int]] = set()
        try:
            info = os.stat(self.top)
            self.seen.add((info.st_dev, info.st_ino))
        except OSError:
            pass

    def files(self, folder: str | Path) -> list[tuple[str, list[str]]]:
        """[(folder path, sorted file names)] under `folder`, sorted by folder path: what
        sorted(os.walk(folder, followlinks=True)) gives on a folder without cycles (names of non-folders, broken
        links included, are files, unreadable folders are skipped, as os.walk does)."""
        out: list[tuple[str, list[str]]] = []
        stack = [os.fspath(folder)]
        if os.fspath(folder) != os.fspath(self.top):
            self._enter(stack[0])
        while stack:
            current = stack.pop()
            names: list[str] = []
            try:
                with os.scandir(current) as entries:
                    for entry in entries:
                        self.count += 1
                        if self.count > self.limit:
                            raise DataLoadError(
                                f"{self.what} {self.top} holds more than {self.limit:,} files and folders, more than "
                                "one dataset walk reads: point at a smaller folder (e.g. one split)")
                        try:
                            is_dir = entry.is_dir()  # follows links, as os.walk(followlinks=True) does
                        except OSError:
                            is_dir = False
                        if is_dir and self._enter(entry.path):
                            stack.append(entry.path)
                        elif not is_dir:
                            names.append(entry.name)
            except OSError:
                continue  # an unreadable folder: skipped, as os.walk skips it
            out.append((current, sorted(names)))
        out.sort(key=lambda item: item[0])
        return out

    def _enter(self, path: str) -> bool:
        try:
            info = os.stat(path)
        except OSError:
            return False
        key = (info.st_dev, info.st_ino)
        if key in self.seen:
            raise DataLoadError(
                f"{self.what} {self.top}: {path} leads to a folder already read (a symlink cycle such as 'a -> ..', "
                "or a second link to the same folder): remove that link")
        self.seen.add(key)
        return True

    def paths(self, folder: str | Path, keep: Callable[[str], bool] | None = None) -> list[str]:
        """Every file path under `folder` (that `keep` accepts), in sorted(os.walk) order."""
        return [os.path.join(root, name) for root, names in self.files(folder) for name in names
                if keep is None or keep(os.path.join(root, name))]


def walk_files(folder: str | Path, keep: Callable[[str], bool] | None = None, what: str = "image folder",
               limit: int | None = None) -> list[str]:
    """Every file path under `folder` (that `keep` accepts) in sorted(os.walk(followlinks=True)) order, read in
    bounded time: a symlink cycle or more than `limit` (MAX_FILES) entries is a DataLoadError."""
    return FolderWalk(folder, what, limit).paths(folder, keep)
