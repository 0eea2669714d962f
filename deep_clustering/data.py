"""Data sets as one tensor of images, and the Lightning DataModule that draws batches from it.

Every loader returns an `ImageSet`: images as (N, C, H, W) float32 in [0, 1], the labels where they
are known, and the source file of each image where there is one. Batches are drawn by index, so
the refinement stage can look up P by sample id. Data sets that fit in device memory live on the
device as one tensor (no worker processes, no per-sample Python); an image folder too large for
memory is decoded once into a uint8 cache file (`DiskImages`) that DataLoader workers read batches from.
"""

import hashlib
import json
import logging
import math
import os
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from deep_clustering.config import is_whole
from deep_clustering.errors import InputError

log = logging.getLogger("deep_clustering")
SPLITS = ("train", "test", "all")
BAD_FILES_NAMED = 10  # the bad files an error names; a folder may hold thousands


class DiskImages:
    """(N, C, H, W) uint8 images in a file, read on demand: indexing gives float32 in [0, 1], as
    indexing an in-memory ImageSet's tensor does. Pickles without its memory map (for DataLoader workers)."""

    def __init__(self, file: Path, shape: tuple[int, ...]) -> None:
        self.file, self.shape = Path(file), tuple(shape)
        self._map = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_map": None}

    def raw(self, index) -> Tensor:
        """The uint8 rows at `index` (an int, a slice, an index or mask tensor, or a tuple of them)."""
        if self._map is None:
            self._map = np.memmap(self.file, np.uint8, "r", shape=self.shape)
        parts = index if isinstance(index, tuple) else (index,)
        parts = tuple(p.cpu().numpy() if isinstance(p, Tensor) else p for p in parts)
        return torch.from_numpy(np.array(self._map[parts]))

    def __getitem__(self, index) -> Tensor:
        return self.raw(index).float() / 255


@dataclass
class ImageSet:
    images: Tensor | DiskImages  # (N, C, H, W) float32 in [0, 1]; DiskImages for data.in_memory=false
    labels: Tensor | None = None  # (N,) int64 true classes; None where unknown
    files: list[str] | None = None  # (N,) source file of each image; None for arrays (the index names it)
    class_names: list[str] | None = None  # the name of each label (an image folder's subfolders); None for arrays
    skipped: list[str] = field(default_factory=list)  # bad files left out, with the reason
    pixel_range: tuple[float, float] = (0.0, 1.0)  # the raw pixel values that became 0 and 1
    workers: int = 0  # DataLoader worker processes that read a DiskImages set
    _on_device: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.images.shape[2:])

    @cached_property
    def fingerprint(self) -> str:
        """What a resumed run checks it has again: the images' shape and labels, and their files or
        (arrays) the pixels of up to 1,024 images spread over the set. A folder's files, not their
        pixels, which another machine's image libraries may decode a little differently."""
        digest = hashlib.sha256(json.dumps([list(self.images.shape), self.files]).encode())
        if self.labels is not None:
            digest.update(self.labels.cpu().numpy().tobytes())
        if self.files is None:
            few = torch.linspace(0, len(self) - 1, min(len(self), 1024)).round().long().unique()
            digest.update(self.images[few].cpu().numpy().tobytes())
        return digest.hexdigest()[:16]

    def on(self, device: torch.device) -> Tensor:
        """The images on `device`, copied there once (in-memory sets only)."""
        device = torch.device(device)
        if isinstance(self.images, DiskImages):
            raise TypeError("a DiskImages set is read in batches (ImageSet.batches), not moved to a device whole")
        if device not in self._on_device:
            self._on_device[device] = self.images.to(device)
        return self._on_device[device]

    def batches(self, index: Tensor, batch_size: int, device: torch.device) -> Iterator[Tensor]:
        """The images `index` on `device`, `batch_size` at a time, in the order of `index`."""
        device = torch.device(device)
        if not isinstance(self.images, DiskImages):
            images = self.on(device)
            yield from (images[i.to(device)] for i in index.split(batch_size))
            return
        cuda = device.type == "cuda"
        loader = DataLoader(
            _Rows(self.images),
            sampler=index.cpu().split(batch_size),
            batch_size=None,  # each item a whole batch
            collate_fn=_as_is,
            num_workers=self.workers,
            pin_memory=cuda,
        )
        for x, _ in loader:
            yield x.to(device, non_blocking=cuda).float() / 255


def from_arrays(
    x: np.ndarray, y: np.ndarray | None, source: str, pixel_range: tuple[float, float] | None = None
) -> ImageSet:
    """(N, H, W), (N, C, H, W) or (N, H, W, C) arrays of any numeric type -> ImageSet in [0, 1].

    A 4-D array is channels last when its last axis is the shortest of the three, else channels
    first. uint8 pixels are divided by 255 and floats in [0, 1] kept as they are; other arrays
    (other integers, floats outside [0, 1]) are mapped from their range (lo to 0, hi to 1):
    integers from min(0, their minimum) to their maximum, floats from their minimum to their
    maximum. `pixel_range`, a trained model's, scales new images as its training images were:
    from that range, whatever their own values and dtype, where training took another than
    uint8's or [0, 1]'s. The range used is recorded in the ImageSet."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[3] < min(x.shape[1], x.shape[2]):  # channels last
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim != 4:
        raise InputError(f"{source}: images must be (N, H, W), (N, C, H, W) or (N, H, W, C), got shape {x.shape}")
    if x.shape[0] == 0:
        raise InputError(f"{source}: holds no images")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise InputError(f"{source}: images must be real numbers, got dtype {x.dtype}")
    integer = np.issubdtype(x.dtype, np.integer)
    if not integer:
        bad = ~np.isfinite(x)
        if bad.any():
            first = np.argwhere(bad)[0][0]
            raise InputError(f"{source}: {int(bad.sum())} NaN or infinite pixel values (first in image {first})")
    images = torch.from_numpy(x.astype(np.float32))
    own = (float(images.min()), float(images.max()))
    usual = pixel_range is None or tuple(pixel_range) in ((0.0, 1.0), (0.0, 255.0))  # trained on uint8 or [0, 1]
    if x.dtype == np.uint8 and usual:
        pixel_range = (0.0, 255.0)
    elif not integer and own[0] >= 0 and own[1] <= 1 and usual:
        pixel_range = (0.0, 1.0)
    elif pixel_range is None:
        pixel_range = (min(own[0], 0.0), max(own[1], 1.0)) if integer else own
    else:  # a trained model's range: a warning where these images stray from it by over 1/16 of it, or fill 1/16 of it
        lo, hi = pixel_range
        if own[0] < lo - (hi - lo) / 16 or own[1] > hi + (hi - lo) / 16 or own[1] - own[0] < (hi - lo) / 16:
            log.warning(
                "%s: pixel values in [%g, %g], scaled as the model's training images were, from [%g, %g]",
                source,
                *own,
                lo,
                hi,
            )
    lo, hi = (float(v) for v in pixel_range)
    if (lo, hi) != (0.0, 1.0):
        images.sub_(lo).div_(max(hi - lo, 1e-12))  # in place: the copy astype made is ours
    return ImageSet(images.contiguous(), as_labels(y, images.shape[0], source), pixel_range=(lo, hi))


def as_labels(y: np.ndarray | None, n: int, source: str) -> Tensor | None:
    """(n,) whole-number labels as int64, or None; an InputError for other values, another count or
    another shape than (n,) or (n, 1)."""
    if y is None:
        return None
    y = np.asarray(y)
    if y.ndim > 1 and y.size != y.shape[0]:
        raise InputError(f"{source}: labels of shape {y.shape}: one label per image, shape ({n},)")
    y = y.reshape(-1)
    if y.shape[0] != n:
        raise InputError(f"{source}: {n} images but {y.shape[0]} labels")
    whole = (
        np.issubdtype(y.dtype, np.integer)
        or y.dtype == bool
        or (np.issubdtype(y.dtype, np.floating) and bool(np.all(np.isfinite(y) & (y == np.round(y)))))
    )
    if not whole:
        raise InputError(
            f"{source}: labels must be whole numbers (class indices), got dtype {y.dtype}, e.g. {y[0].item()!r}"
        )
    return torch.from_numpy(y.astype(np.int64))


def _pick(split: str, train: tuple, test: tuple | None, source: str) -> tuple:
    if split not in SPLITS:
        raise InputError(f"data.split={split!r} must be one of {', '.join(SPLITS)}")
    if split == "train" or (split == "all" and test is None):
        return train
    if test is None:
        raise InputError(f"data.split=test but {source} has no test split")
    if split == "test":
        return test
    if train[0].shape[1:] != test[0].shape[1:]:
        raise InputError(
            f"{source}: data.split=all joins train and test, but their images are {train[0].shape[1:]} and "
            f"{test[0].shape[1:]}: make them alike, or take data.split=train or test"
        )
    if train[0].dtype != test[0].dtype:  # one array, scaled by one rule: uint8 beside floats in [0, 1] would be black
        raise InputError(
            f"{source}: data.split=all joins train and test, but their images are {train[0].dtype} and "
            f"{test[0].dtype}: give both one dtype and scale, or take data.split=train or test"
        )
    if (train[1] is None) != (test[1] is None):
        log.warning("%s: only one of the splits has labels: train and test together are unlabelled", source)
    y = None if train[1] is None or test[1] is None else np.concatenate([train[1], test[1]])
    return np.concatenate([train[0], test[0]]), y


def load_digits() -> ImageSet:
    """scikit-learn's bundled 8x8 handwritten digits: 1,797 images, 10 classes, offline."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    return from_arrays(d.images.astype(np.float32) / 16.0, d.target, "sklearn digits")


def given_path(path: str | None, what: str) -> Path:
    """data.path as a Path; null or '' refused (until 2026-12-06 Hydra's TypeError, and Path(''), the
    current folder, which an empty value does not mean)."""
    if not path:
        raise InputError(f"data.path={'null' if path is None else repr(path)}: give {what}")
    return Path(path).expanduser()


def load_npz(path: str, split: str = "all", pixel_range: tuple[float, float] | None = None) -> ImageSet:
    """An .npz with `x_train` (and `y_train`), optionally `x_test` / `y_test`; `pixel_range` as in
    `from_arrays` (a trained model's, for prediction)."""
    file = given_path(path, "the .npz file")
    if not file.is_file():
        raise InputError(f"data.path={path}: no such file")
    if not zipfile.is_zipfile(file):
        raise InputError(f"data.path={path}: not an .npz file (numpy.savez writes one, a zip archive of arrays)")
    try:
        arrays = np.load(file)
    except Exception as e:
        raise InputError(f"data.path={path}: not a readable .npz file ({e})") from None
    with arrays:
        if "x_train" not in arrays:
            raise InputError(f"{file}: missing array 'x_train' (found: {', '.join(arrays.files) or 'none'})")

        def read(key: str):
            try:
                return arrays[key]
            except ValueError as e:  # object arrays: numpy will not unpickle them
                raise InputError(f"{file}: array '{key}' cannot be read ({e}): store numbers") from None

        def part(name: str) -> tuple | None:
            if f"x_{name}" not in arrays:
                return None
            return read(f"x_{name}"), read(f"y_{name}") if f"y_{name}" in arrays else None

        x, y = _pick(split, part("train"), part("test"), str(file))
    return from_arrays(x, y, str(file), pixel_range)


def load_torchvision(name: str, root: str = "data", split: str = "all", download: bool = True) -> ImageSet:
    """MNIST, FashionMNIST or USPS from torchvision, downloaded into `root` when missing."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, name)
    folder = Path(root).expanduser()
    files = folder if name == "USPS" else folder / name / "raw"  # where torchvision reads the files
    made = [f for f in (folder, folder / name, folder / name / "raw") if not f.exists()]  # left empty if it fails

    def part(train: bool) -> tuple:
        try:
            ds = cls(root=root, train=train, download=download)
        except (RuntimeError, OSError) as e:
            for empty in reversed(made):
                if empty.is_dir() and not any(empty.iterdir()):
                    empty.rmdir()
            # torchvision's reason spans lines (each mirror tried): one line (until 2026-12-06 its first alone)
            raise InputError(
                f"data.root={root}: cannot load {name} ({' '.join(str(e).split())}); without a network, "
                f"put its files in {files} first, or give the arrays as data=npz data.path=FILE.npz"
            ) from None
        return np.asarray(ds.data), np.asarray(ds.targets)

    if split not in SPLITS:
        raise InputError(f"data.split={split!r} must be one of {', '.join(SPLITS)}")
    parts = [part(train) for train in (True, False) if split in ("all", "train" if train else "test")]
    return from_arrays(
        np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts]), f"{name} in {root}"
    )


def load_image_folder(
    path: str,
    image_size: tuple[int, int] = (32, 32),
    channels: int = 3,
    labels: str = "auto",
    on_bad_file: str = "error",
    workers: int = 8,
    in_memory: bool = True,
    cache_dir: str = "~/.cache/deep_clustering",
    loader_workers: int = 2,
) -> ImageSet:
    """Every image file under `path`, converted to `channels` and resized to `image_size`.

    labels: 'auto' labels each image by its first-level subfolder when every image sits in one
    and there are two or more (as torchvision's ImageFolder does), 'none' never. Linked folders are
    followed. on_bad_file: 'error' stops naming the files that cannot be read as images (the
    first BAD_FILES_NAMED, and how many more); 'skip' leaves them out and records them all.
    in_memory=False decodes the images once into a uint8 file under `cache_dir` (reused while the
    folder's files, sizes and times are unchanged) and reads batches from it with `loader_workers`
    DataLoader processes, for folders larger than memory.
    """
    # checked here, not in config.RULES, for predict's image folders too (torch's traceback at the
    # first batch until 2026-12-06)
    for key, value, least in (("workers", workers, 1), ("loader_workers", loader_workers, 0)):
        if not (is_whole(value) and value >= least):
            raise InputError(f"data.{key}={value!r} must be a whole number, at least {least}")
    root = given_path(path, "the image folder (. for the current one)")
    if not root.is_dir():
        what = "a file, not a folder (data=npz reads .npz files)" if root.is_file() else "no such folder"
        raise InputError(f"data.path={path}: {what}")
    if channels not in (1, 3):
        raise InputError(f"data.channels={channels} must be 1 or 3")
    if labels not in ("auto", "none"):
        raise InputError(f"data.labels={labels!r} must be 'auto' or 'none'")
    if on_bad_file not in ("error", "skip"):
        raise InputError(f"data.on_bad_file={on_bad_file!r} must be 'error' or 'skip'")
    files = sorted(_files_under(root))
    if not files:
        raise InputError(f"data.path={path}: the folder holds no files")
    shape = (len(files), channels, int(image_size[0]), int(image_size[1]))
    if in_memory:
        images = np.empty(shape, np.uint8)
        kept, bad = _decode_into(images, files, root, workers)
        images = images[: len(kept)]
    else:
        images, kept, bad = _cached(files, root, shape, workers, Path(cache_dir).expanduser())
    if bad and on_bad_file == "error":
        more = len(bad) - BAD_FILES_NAMED
        listed = "; ".join(bad[:BAD_FILES_NAMED])
        if more > 0:
            listed += f"; and {more} more (data.on_bad_file=skip lists every one in the run folder's skipped_files.txt)"
        raise InputError(
            f"data.path={path}: {len(bad)} of {len(files)} files are not readable images "
            f"(set data.on_bad_file=skip to leave them out): {listed}"
        )
    if not kept:
        raise InputError(f"data.path={path}: none of its {len(files)} files is a readable image")
    rel = [Path(f) for f in kept]
    y = None
    classes = sorted({r.parts[0] for r in rel})
    loose = [str(r) for r in rel if len(r.parts) == 1]  # images beside the subfolders
    if labels == "auto" and not loose and len(classes) > 1:  # one folder: no classes
        y = np.array([classes.index(r.parts[0]) for r in rel])
    elif labels == "auto" and 0 < len(loose) < len(rel):
        log.info("data.labels=auto: no labels, as %d images lie outside the subfolders (%s)", len(loose), loose[0])
    targets = torch.from_numpy(y) if y is not None else None
    if in_memory:  # (N, C, H, W) uint8: the layout is known, not guessed as from_arrays must
        out = ImageSet(torch.from_numpy(images).float().div_(255), targets, pixel_range=(0.0, 255.0))
    else:
        out = ImageSet(images, targets, pixel_range=(0.0, 255.0), workers=loader_workers)  # uint8 in the file
    out.files, out.skipped = kept, bad
    out.class_names = classes if y is not None else None
    return out


def _files_under(root: Path) -> list[Path]:
    """Every entry under `root` that is not a folder (files, dangling links: the latter reported
    later as unreadable), hidden ones left out; linked folders are followed, each real folder once."""
    out, seen, todo = [], set(), [root]
    while todo:
        folder = todo.pop()
        if folder.resolve() in seen:  # a link back up the tree, or a second link to one folder
            continue
        seen.add(folder.resolve())
        for entry in os.scandir(folder):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():  # follows links
                todo.append(Path(entry.path))
            else:
                out.append(Path(entry.path))
    return out


def _decode_into(out: np.ndarray, files: list[Path], root: Path, workers: int) -> tuple[list[str], list[str]]:
    """Decode `files` into the rows of `out` (N, C, H, W) uint8, the readable ones first, in order.

    Returns the readable files and the unreadable ones with the reason, both relative to `root`.
    """
    kept, bad = [], []
    size = out.shape[2:]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for start in range(0, len(files), 1024):  # a chunk at a time: memory stays flat
            chunk = files[start : start + 1024]
            for f, a in zip(chunk, pool.map(lambda p: _read_image(p, size, out.shape[1]), chunk)):
                if isinstance(a, str):
                    bad.append(f"{f.relative_to(root)}: {a}")
                else:
                    out[len(kept)] = a.transpose(2, 0, 1)
                    kept.append(str(f.relative_to(root)))
    return kept, bad


def _cached(
    files: list[Path], root: Path, shape: tuple[int, ...], workers: int, cache_dir: Path
) -> tuple[DiskImages, list[str], list[str]]:
    """The folder decoded into cache_dir/KEY.u8 (uint8 rows) and KEY.json (files kept and bad), built
    once per folder content, size and channels; written under temporary names, then renamed."""
    # 2: the version of how images decode (since 2026-12-06 upright by EXIF), so older caches are not reused
    key = hashlib.sha256(json.dumps([2, str(root.resolve()), shape[1:]]).encode())
    for f in files:
        st = f.stat() if f.exists() else None
        key.update(os.fsencode(f"{f.relative_to(root)}\0{st and st.st_size}\0{st and st.st_mtime_ns}\n"))
    data, meta = cache_dir / f"{key.hexdigest()[:32]}.u8", cache_dir / f"{key.hexdigest()[:32]}.json"
    if not meta.is_file():
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = data.with_name(f"{data.name}.{os.getpid()}.tmp")
            rows = np.memmap(tmp, np.uint8, "w+", shape=shape)
            kept, bad = _decode_into(rows, files, root, workers)
            rows.flush()
            del rows
            os.truncate(tmp, len(kept) * math.prod(shape[1:]))  # the unreadable files' rows were never filled
            os.replace(tmp, data)
            tmp_meta = meta.with_name(f"{meta.name}.{os.getpid()}.tmp")
            tmp_meta.write_text(json.dumps({"shape": [len(kept), *shape[1:]], "files": kept, "bad": bad}))
            os.replace(tmp_meta, meta)  # last: its presence marks the cache complete
        except OSError as e:
            raise InputError(f"data.cache_dir={cache_dir}: cannot write the image cache there ({e})") from None
    info = json.loads(meta.read_text())
    return DiskImages(data, tuple(info["shape"])), info["files"], info["bad"]


def _read_image(path: Path, size: tuple[int, int], channels: int) -> np.ndarray | str:
    """One image as (H, W, C) uint8, or the reason it cannot be read."""
    if not path.exists():
        return "dangling link"
    if path.stat().st_size == 0:
        return "empty file"
    try:
        with Image.open(path) as img:
            img.load()  # decodes everything, so truncated files fail here
            ImageOps.exif_transpose(img, in_place=True)  # upright as viewers show it (a phone's photos: EXIF)
            if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit and float: scale to 8 bits
                a = np.asarray(img, dtype=np.float32)
                top = 65535.0 if img.mode.startswith("I;16") else max(float(a.max()), 1.0)
                img = Image.fromarray((a / top * 255).clip(0, 255).astype(np.uint8))
            elif img.mode in ("P", "PA"):
                img = img.convert("RGBA")
            img = img.convert("L" if channels == 1 else "RGB").resize(size[::-1], Image.BILINEAR)
            a = np.asarray(img, dtype=np.uint8)
    except Exception as e:  # PIL raises many types for bad files
        return f"not a readable image ({type(e).__name__}: {e})".replace("\n", " ")
    return a[:, :, None] if a.ndim == 2 else a


class _Indices(Dataset):
    """A data set whose items are their own indices; each item a whole batch of them."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, batch: Tensor) -> Tensor:
        return batch


class _Rows(Dataset):
    """The rows of a DiskImages set; each item a whole batch, read at once: indices -> (uint8 images, indices)."""

    def __init__(self, images: DiskImages) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, batch: Tensor) -> tuple[Tensor, Tensor]:
        return self.images.raw(batch), batch


def _as_is(batch):
    return batch


class ShardedBatches(Sampler):
    """Batches of sample indices for one process, drawn from a permutation fixed by (seed, epoch).

    As torch's DistributedSampler: the permutation is padded by repeating indices to a multiple of
    the number of processes, and process `rank` takes every `world`-th index, so every process gets
    the same number of batches. The batches are put on `device` (one copy per epoch, not per step).
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        device: torch.device | str = "cpu",
    ) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world = rank, world
        self.device = torch.device(device)
        self.epoch = 0
        self.skip = 0  # batches to leave out of the next epoch: those a resumed run already trained on

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(math.ceil(self.n / self.world) / self.batch_size)

    def __iter__(self) -> Iterator[Tensor]:
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        total = math.ceil(self.n / self.world) * self.world
        order = torch.cat([order, order[: total - self.n]])[self.rank :: self.world]
        skip, self.skip = self.skip, 0
        yield from order.to(self.device).split(self.batch_size)[skip:]


def random_affine(x: Tensor, shift: float, rotation: float, gen: torch.Generator) -> Tensor:
    """Each image shifted by up to `shift` of its size and rotated by up to `rotation` degrees,
    independently and uniformly (DEC-DA's augmentation), zeros filling in.

    Args:
        x: (B, C, H, W) images; gen: a generator on x's device, so the draw can be repeated.
    """
    b = x.shape[0]
    u = torch.rand(b, 3, generator=gen, device=x.device) * 2 - 1
    angle = u[:, 0] * rotation * math.pi / 180
    cos, sin = angle.cos(), angle.sin()
    tx, ty = u[:, 1] * shift * 2, u[:, 2] * shift * 2  # affine_grid's coordinates span [-1, 1]
    # the rotation in pixels, where [-1, 1] spans W across and H down: aspect = H / W (1 for square
    # images; until 2026-12-06 1 for all, a shear and a stretch where H != W)
    aspect = x.shape[2] / x.shape[3]
    theta = torch.stack([torch.stack([cos, -sin * aspect, tx], 1), torch.stack([sin / aspect, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def check_same_data(state: dict, data: ImageSet) -> None:
    """A resumed run's data must be the data its checkpoint was trained on (`state`: the
    ImageDataModule's state in the checkpoint)."""
    if state["fingerprint"] != data.fingerprint:
        size = f"{len(data)} images now, {state['images']} then" if state["images"] != len(data) else ""
        raise InputError(
            f"resume: the data set changed since the run started ({size or 'other files, labels or pixels'}); "
            "resume it on the data it started with, or start a new run"
        )


class ImageDataModule(L.LightningDataModule):
    """Hands out batches as (images, sample indices), the images indexed out of one device tensor
    (or read from a DiskImages file by DataLoader workers), randomly shifted and rotated when
    `shift` or `rotation` is set.

    The augmentation draws from a generator seeded by (seed, step, rank), so a resumed run draws
    what the uninterrupted run drew.
    """

    def __init__(
        self, data: ImageSet, batch_size: int, seed: int = 0, shift: float = 0.0, rotation: float = 0.0
    ) -> None:
        super().__init__()
        self.data = data
        self.batch_size = batch_size
        self.seed = seed
        self.shift, self.rotation = shift, rotation

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        # in-memory images are indexed on the device: the batches of indices go there once an epoch
        device = "cpu" if isinstance(self.data.images, DiskImages) else trainer.strategy.root_device
        sampler = ShardedBatches(
            len(self.data), self.batch_size, self.seed, trainer.global_rank, trainer.world_size, device=device
        )
        # a run resumed mid-epoch goes on with the batch it stopped at, as if never interrupted
        # (every epoch has len(sampler) steps, so the step count tells where in the epoch it was),
        # in that epoch's order: DataLoader workers read the sampler before Lightning sets its epoch
        sampler.skip = trainer.global_step % len(sampler)
        sampler.set_epoch(trainer.current_epoch)
        # the batches are the DataLoader's sampler, each item a whole batch (batch_size=None), not its
        # batch_sampler: Lightning calls set_epoch on a DataLoader's sampler (and on its batch_sampler's
        # sampler), never on a batch_sampler itself, which would draw the same batches every epoch
        one_batch_an_item = {"sampler": sampler, "batch_size": None, "collate_fn": _as_is}
        if isinstance(self.data.images, DiskImages):
            workers = self.data.workers
            return DataLoader(
                _Rows(self.data.images),
                **one_batch_an_item,
                num_workers=workers,
                persistent_workers=workers > 0,
                pin_memory=trainer.strategy.root_device.type == "cuda",
            )
        return DataLoader(_Indices(len(self.data)), **one_batch_an_item)

    def state_dict(self) -> dict:
        """In each checkpoint: what data it was trained on (P and the labels are indexed by sample)."""
        return {"images": len(self.data), "fingerprint": self.data.fingerprint}

    def load_state_dict(self, state: dict) -> None:
        check_same_data(state, self.data)

    def on_after_batch_transfer(self, batch: Tensor | tuple, dataloader_idx: int) -> tuple[Tensor, Tensor]:
        if isinstance(batch, (tuple, list)):  # (uint8 images, indices) read from a DiskImages file
            x, batch = batch[0].float() / 255, batch[1]
        else:
            x = self.data.on(batch.device)[batch]
        if self.shift or self.rotation:
            trainer = self.trainer
            key = (self.seed * 1_000_003 + trainer.global_step) * 1024 + trainer.global_rank
            gen = torch.Generator(device=batch.device).manual_seed(key)
            x = random_affine(x, self.shift, self.rotation, gen)
        return x, batch
