import logging
import math
import os
from functools import partial

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from deep_clustering.data import (
    DiskImages,
    ImageDataModule,
    ShardedBatches,
    from_arrays,
    load_digits,
    load_image_folder,
    load_npz,
    load_torchvision,
)
from deep_clustering.errors import InputError
from deep_clustering.models import ConvAutoencoder
from deep_clustering.pipeline import fit
from deep_clustering.pretrain import AutoencoderModule
from tests.conftest import shared_npz


def test_digits():
    d = load_digits()
    assert d.images.shape == (1797, 1, 8, 8) and d.labels.shape == (1797,)
    assert 0 <= float(d.images.min()) and float(d.images.max()) == 1.0


def test_usps_npz_all_splits():
    d = load_npz(str(shared_npz("usps")), split="all")
    assert d.images.shape == (9298, 1, 16, 16)
    assert d.labels[:6].tolist() == [6, 5, 4, 7, 3, 6]  # the README's first train labels
    assert load_npz(str(shared_npz("usps")), split="test").images.shape[0] == 2007


def test_npz_without_labels_or_test(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, x_train=np.zeros((5, 4, 4, 3), np.uint8))
    d = load_npz(str(path))
    assert d.images.shape == (5, 3, 4, 4) and d.labels is None
    with pytest.raises(InputError, match="has no test split"):
        load_npz(str(path), split="test")


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((5, 4, 4))}, "missing array 'x_train'"),
        ({"x_train": np.zeros((5, 4))}, r"shape \(5, 4\)"),
        ({"x_train": np.full((5, 4, 4), np.nan)}, "NaN"),
        ({"x_train": np.zeros((5, 4, 4)), "y_train": np.zeros(4)}, "5 images but 4 labels"),
        ({"x_train": np.zeros((5, 4, 4)), "x_test": np.zeros((2, 5, 5))}, r"their images are \(4, 4\) and \(5, 5\)"),
        # one rule scales the joined array: uint8 beside floats in [0, 1] would leave the floats black
        ({"x_train": np.zeros((5, 4, 4), np.uint8), "x_test": np.zeros((2, 4, 4))}, "are uint8 and float64"),
        ({"x_train": np.zeros((3, 4, 4)), "y_train": np.array(list("abc"))}, "labels must be whole numbers"),
        ({"x_train": np.zeros((3, 4, 4)), "y_train": np.array([0, 0.5, 1])}, r"got dtype float64, e.g. 0.0"),
        # numpy will not unpickle object arrays: until 2026-12-06 Hydra's error, without the file
        ({"x_train": np.zeros((3, 4, 4)), "y_train": np.array([0, None, 1])}, "array 'y_train' cannot be read"),
    ],
)
def test_npz_bad_input_names_the_file(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(InputError, match=message) as err:
        load_npz(str(path))
    assert str(path) in str(err.value)


def test_npz_that_is_not_one_and_labels_of_one_split(tmp_path, caplog):
    (tmp_path / "text.npz").write_text("x_train")
    with pytest.raises(InputError, match=r"text.npz: not an .npz file \(numpy.savez writes one"):
        load_npz(str(tmp_path / "text.npz"))
    np.savez(tmp_path / "half.npz", x_train=np.zeros((5, 4, 4)), y_train=np.zeros(5), x_test=np.zeros((2, 4, 4)))
    assert load_npz(str(tmp_path / "half.npz")).labels is None
    assert "only one of the splits has labels" in caplog.text


def test_npz_missing_file():
    with pytest.raises(InputError, match="data.path=/nope.npz: no such file"):
        load_npz("/nope.npz")


def test_float_images_outside_unit_range_are_rescaled():
    d = from_arrays(np.array([[[0.0, 255.0]]], np.float32), None, "x")
    assert d.images.flatten().tolist() == [0.0, 1.0]


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((2, 5, 6), (2, 1, 5, 6)),
        ((2, 5, 6, 1), (2, 1, 5, 6)),
        ((2, 1, 5, 6), (2, 1, 5, 6)),
        ((2, 5, 6, 3), (2, 3, 5, 6)),
        ((2, 3, 5, 6), (2, 3, 5, 6)),
        ((2, 5, 6, 2), (2, 2, 5, 6)),  # neither gray nor RGB, channels last: the last axis is the shortest
        ((2, 2, 5, 6), (2, 2, 5, 6)),
        ((2, 16, 16, 13), (2, 13, 16, 16)),
    ],
)
def test_arrays_are_channels_last_where_the_last_axis_is_the_shortest(shape, expected):
    x = np.arange(np.prod(shape)).reshape(shape) % 256
    d = from_arrays(x.astype(np.uint8), None, "x")
    assert tuple(d.images.shape) == expected
    last = len(shape) == 4 and shape[3] < shape[1]
    pixel = x[1, 4, 5, 0] if last else x[1, 0, 4, 5] if len(shape) == 4 else x[1, 4, 5]
    assert d.images[1, 0, 4, 5] == pixel / 255


def test_signed_integers_map_from_their_range_and_a_models_range_holds_for_any_batch(caplog):
    d = from_arrays(np.arange(-128, 128, dtype=np.int16).reshape(1, 16, 16), None, "x")
    assert d.pixel_range == (-128.0, 127.0) and d.images.min() == 0 and d.images.max() == 1
    # a model trained on floats in [0, 2] scales new images from [0, 2], whatever else is in the batch
    # (until 2026-12-06 a batch within [0, 1] was kept as it was: the same image clustered by its company)
    x = np.random.default_rng(0).random((6, 4, 4)) * 2
    trained = from_arrays(x, None, "x").pixel_range
    alone = from_arrays(x[:3] / 2, None, "x", trained).images
    together = from_arrays(np.concatenate([x[:3] / 2, x[3:]]), None, "x", trained).images[:3]
    torch.testing.assert_close(alone, together)
    expected = (x[:3, None] / 2 - trained[0]) / (trained[1] - trained[0])
    torch.testing.assert_close(together, torch.from_numpy(expected).float())
    assert "scaled as the model's training images were" not in caplog.text  # they lie within its range
    from_arrays(x * 4, None, "x", trained)
    assert "pixel values in [0.0" in caplog.text and "scaled as the model's training images were" in caplog.text


def _save(path, mode, size, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)


def test_image_folder_follows_linked_folders_and_needs_two_classes(tmp_path):
    _save(tmp_path / "root" / "cats" / "a.png", "L", (4, 4), 10)
    _save(tmp_path / "elsewhere" / "dogs" / "b.png", "L", (4, 4), 20)
    _save(tmp_path / "elsewhere" / "dogs" / "c.png", "L", (4, 4), 30)
    (tmp_path / "root" / "dogs").symlink_to(tmp_path / "elsewhere" / "dogs", target_is_directory=True)
    (tmp_path / "root" / "cats" / "loop").symlink_to(tmp_path / "root", target_is_directory=True)  # a cycle
    d = load_image_folder(str(tmp_path / "root"), image_size=(4, 4), channels=1)
    assert d.files == ["cats/a.png", "dogs/b.png", "dogs/c.png"] and d.labels.tolist() == [0, 1, 1]
    # every image in one subfolder (photos/2024/...): no classes to score against
    only = load_image_folder(str(tmp_path / "elsewhere"), image_size=(4, 4), channels=1)
    assert len(only) == 2 and only.labels is None


def test_image_folder_labels_modes_and_sizes(tmp_path):
    _save(tmp_path / "cats" / "a.png", "L", (10, 12), 255)
    _save(tmp_path / "cats" / "b.png", "RGBA", (40, 40), (255, 0, 0, 255))
    _save(tmp_path / "dogs" / "c.png", "P", (8, 8), 3)
    _save(tmp_path / "dogs" / "d.tif", "I;16", (16, 16), 65535)
    _save(tmp_path / "dogs" / "e.jpg", "CMYK", (20, 20), (0, 0, 0, 0))
    d = load_image_folder(str(tmp_path), image_size=(16, 16), channels=3)
    assert d.images.shape == (5, 3, 16, 16)
    assert d.labels.tolist() == [0, 0, 1, 1, 1] and d.class_names == ["cats", "dogs"]
    assert d.files == ["cats/a.png", "cats/b.png", "dogs/c.png", "dogs/d.tif", "dogs/e.jpg"]
    torch.testing.assert_close(d.images[3], torch.ones(3, 16, 16))  # 16-bit white stays white
    assert d.images[1, 0].mean() > 0.99 and d.images[1, 1].mean() < 0.01  # red
    gray = load_image_folder(str(tmp_path), image_size=(8, 8), channels=1)
    assert gray.images.shape == (5, 1, 8, 8)


@pytest.mark.parametrize("in_memory", [True, False])
def test_photos_are_turned_upright_by_their_exif_orientation(tmp_path, in_memory):
    upright = np.zeros((20, 10), np.uint8)
    upright[:5] = 255  # a band at the top of a portrait image
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: turn 90 degrees clockwise to show, as a phone held upright stores it
    Image.fromarray(np.rot90(upright).copy()).save(tmp_path / "photo.png", exif=exif)
    d = load_image_folder(str(tmp_path), (20, 10), 1, in_memory=in_memory, cache_dir=str(tmp_path / "cache"))
    first = d.images[torch.arange(1)][0, 0]  # DiskImages are read by index tensors
    np.testing.assert_array_equal((first * 255).round().numpy(), upright)


def test_image_folder_without_subfolders_has_no_labels(tmp_path, caplog):
    _save(tmp_path / "a.png", "L", (8, 8), 0)
    _save(tmp_path / "b.png", "L", (8, 8), 0)
    unlabelled = load_image_folder(str(tmp_path))
    assert unlabelled.labels is None and unlabelled.class_names is None
    # class folders beside a loose image: no labels either, and the log says which image stands outside
    _save(tmp_path / "cats" / "c.png", "L", (8, 8), 0)
    _save(tmp_path / "dogs" / "d.png", "L", (8, 8), 0)
    with caplog.at_level(logging.INFO, logger="deep_clustering"):
        assert load_image_folder(str(tmp_path)).labels is None
    assert "no labels, as 2 images lie outside the subfolders (a.png)" in caplog.text
    with pytest.raises(InputError, match=r"data.path=.*a.png: a file, not a folder \(data=npz reads .npz files\)"):
        load_image_folder(str(tmp_path / "a.png"))


def test_image_folder_bad_files_are_listed_or_skipped(tmp_path):
    _save(tmp_path / "good.png", "L", (8, 8), 0)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "cut.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "cut.jpg").read_bytes()[:200])
    (tmp_path / "gone.png").symlink_to(tmp_path / "missing.png")
    with pytest.raises(InputError) as err:
        load_image_folder(str(tmp_path))
    message = str(err.value)
    for name in ("empty.png: empty file", "notes.txt", "cut.jpg", "gone.png: dangling link"):
        assert name in message
    assert "good.png" not in message and "\n" not in message
    d = load_image_folder(str(tmp_path), on_bad_file="skip")
    assert d.files == ["good.png"] and len(d.skipped) == 4


def test_a_folder_of_many_bad_files_gets_an_error_of_one_short_line(tmp_path):
    _save(tmp_path / "good.png", "L", (8, 8), 0)
    for i in range(25):
        (tmp_path / f"bad{i:02d}.png").write_bytes(b"not a png")
    with pytest.raises(InputError) as err:
        load_image_folder(str(tmp_path))
    message = str(err.value)
    assert "25 of 26 files are not readable images" in message
    assert "bad09.png" in message and "bad10.png" not in message  # the first ten, in order
    assert message.endswith(
        "; and 15 more (data.on_bad_file=skip lists every one in the run folder's skipped_files.txt)"
    )
    assert "\n" not in message and len(message) < 2000
    assert len(load_image_folder(str(tmp_path), on_bad_file="skip").skipped) == 25


def test_image_folder_on_disk_reads_what_memory_holds_and_reuses_its_cache(tmp_path):
    folder, cache = tmp_path / "images", tmp_path / "cache"
    for i in range(7):
        _save(folder / f"c{i % 2}" / f"{i}.png", "RGB", (9 + i, 12), (30 * i, 255 - 30 * i, 7 * i))
    (folder / "c0" / "bad.png").write_bytes(b"not a png")
    memory = load_image_folder(str(folder), image_size=(10, 10), on_bad_file="skip")
    disk = load_image_folder(
        str(folder), image_size=(10, 10), on_bad_file="skip", in_memory=False, cache_dir=str(cache)
    )
    assert isinstance(disk.images, DiskImages) and disk.images.shape == memory.images.shape == (7, 3, 10, 10)
    assert torch.equal(disk.images[torch.arange(7)], memory.images)
    assert torch.equal(disk.labels, memory.labels) and disk.files == memory.files and disk.skipped == memory.skipped
    batches = list(disk.batches(torch.tensor([6, 0, 3]), 2, torch.device("cpu")))
    assert torch.equal(torch.cat(batches), memory.images[[6, 0, 3]]) and len(batches) == 2
    with pytest.raises(InputError, match="1 of 8 files are not readable images.*c0/bad.png"):
        load_image_folder(str(folder), image_size=(10, 10), in_memory=False, cache_dir=str(cache))
    built = sorted(cache.iterdir())
    assert [f.suffix for f in built] == [".json", ".u8"]  # one entry, no temporary files left
    stamps = [f.stat().st_mtime_ns for f in built]
    load_image_folder(str(folder), image_size=(10, 10), on_bad_file="skip", in_memory=False, cache_dir=str(cache))
    assert [f.stat().st_mtime_ns for f in built] == stamps  # reused, not rebuilt
    _save(folder / "c1" / "new.png", "L", (8, 8), 255)  # the folder changed: a new entry
    again = load_image_folder(
        str(folder), image_size=(10, 10), on_bad_file="skip", in_memory=False, cache_dir=str(cache)
    )
    assert len(again) == 8 and len(list(cache.iterdir())) == 4


def test_image_folder_empty(tmp_path):
    with pytest.raises(InputError, match="holds no files"):
        load_image_folder(str(tmp_path))


@pytest.mark.parametrize("world", [1, 2, 3])
def test_sharded_batches_cover_every_sample(world):
    n, bs = 103, 8
    shards = [list(ShardedBatches(n, bs, seed=1, rank=r, world=world)) for r in range(world)]
    lengths = {len(s) for s in shards}
    assert len(lengths) == 1 and lengths == {len(ShardedBatches(n, bs, world=world))}
    seen = torch.cat([b for s in shards for b in s])
    assert set(seen.tolist()) == set(range(n)) and len(seen) - n < world


def test_sharded_batches_reshuffle_each_epoch():
    s = ShardedBatches(50, 50, seed=0)
    first = next(iter(s))
    s.set_epoch(1)
    assert not torch.equal(first, next(iter(s)))
    s.set_epoch(0)
    assert torch.equal(first, next(iter(s)))


class Record(L.LightningModule):
    """Notes the sample indices of each batch it trains on."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch[1].tolist())
        return (self.w * batch[0].mean()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class StopAt12(L.Callback):
    """Saves a checkpoint after step 12 (batch size 10 of 50 samples: the third batch of the third
    epoch) and ends the fit there."""

    def __init__(self, path):
        self.path = path

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == 12:
            trainer.save_checkpoint(self.path)
            raise RuntimeError("interrupted")


def fit_batches(data, module, tmp_path, epochs=4, callbacks=(), ckpt_path=None) -> None:
    L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        default_root_dir=tmp_path,
        callbacks=list(callbacks),
    ).fit(module, ImageDataModule(data, 10, seed=4), ckpt_path=ckpt_path)


def batches_of_epochs(epochs: int) -> list[list[int]]:
    """The batches ShardedBatches gives 50 samples in batches of 10, seed 4, epoch after epoch."""
    sampler, batches = ShardedBatches(50, 10, seed=4), []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        batches += [b.tolist() for b in sampler]
    return batches


def test_training_draws_new_batches_every_epoch_as_the_sampler_gives_them(tmp_path):
    """Lightning sets the sampler's epoch: each epoch a new order, the one ShardedBatches gives for it."""
    module = Record()
    fit_batches(from_arrays(np.random.default_rng(0).random((50, 4, 4)), None, "random"), module, tmp_path, epochs=3)
    assert module.seen == batches_of_epochs(3) and module.seen[:5] != module.seen[5:10]


@pytest.mark.parametrize("in_memory", [True, False])
def test_a_run_resumed_mid_epoch_draws_the_batches_the_uninterrupted_run_drew(tmp_path, in_memory):
    """From a checkpoint in the third epoch, the rest of that epoch's batches in its own order, then the
    next epoch's. (On disk, DataLoader workers read the sampler before Lightning set its epoch: until
    2026-12-06 a run resumed there drew the first epoch's order.)"""
    for i in range(50):
        _save(tmp_path / "images" / f"{i:02d}.png", "L", (4, 4), i * 5)
    data = load_image_folder(
        str(tmp_path / "images"), (4, 4), 1, in_memory=in_memory, cache_dir=str(tmp_path / "cache"), loader_workers=1
    )
    with pytest.raises(RuntimeError, match="interrupted"):
        fit_batches(data, Record(), tmp_path, callbacks=[StopAt12(tmp_path / "mid.ckpt")])
    resumed = Record()
    fit_batches(data, resumed, tmp_path, ckpt_path=tmp_path / "mid.ckpt")
    assert resumed.seen == batches_of_epochs(4)[12:]


def test_a_run_resumed_on_other_data_is_refused(tmp_path):
    """P and the labels of a checkpoint are indexed by sample: resumed on a changed data set, a run
    ended in an IndexError (more images) or went on silently with the wrong targets (as many)."""
    x = np.random.default_rng(0).random((50, 4, 4))
    with pytest.raises(RuntimeError, match="interrupted"):
        fit_batches(from_arrays(x, None, "x"), Record(), tmp_path, callbacks=[StopAt12(tmp_path / "mid.ckpt")])
    for other, message in [(x[:40], "40 images now, 50 then"), (x[::-1], "other files, labels or pixels")]:
        with pytest.raises(InputError, match=rf"resume: the data set changed since the run started \({message}\)"):
            fit_batches(from_arrays(other, None, "x"), Record(), tmp_path, ckpt_path=tmp_path / "mid.ckpt")
    resumed = Record()
    fit_batches(from_arrays(x.copy(), None, "x"), resumed, tmp_path, ckpt_path=tmp_path / "mid.ckpt")
    assert resumed.seen == batches_of_epochs(4)[12:]


def test_random_affine_is_repeatable_and_bounded():
    from deep_clustering.data import random_affine

    x = torch.zeros(4, 1, 20, 20)
    x[:, :, 8:12, 8:12] = 1  # a square in the middle
    a = random_affine(x, 0.1, 10, torch.Generator().manual_seed(3))
    b = random_affine(x, 0.1, 10, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, x)
    for img in a:  # the square's centre moves by at most 10% of 20 pixels in x and y
        ys, xs = torch.nonzero(img[0] > 0.5, as_tuple=True)
        assert abs(ys.float().mean() - 9.5) <= 2.5 and abs(xs.float().mean() - 9.5) <= 2.5
    torch.testing.assert_close(random_affine(x, 0.0, 0.0, torch.Generator()), x)


@pytest.mark.parametrize("shape", [(61, 61), (21, 61), (61, 21)])
def test_random_affine_rotates_images_that_are_not_square_rigidly(shape):
    # until 2026-12-06 the rotation was built in affine_grid's [-1, 1] square: where H != W a shear and
    # a stretch (a dot 10 px right of centre, turned 46 degrees, landed 8.2 px away at 14 degrees)
    from deep_clustering.data import random_affine

    h, w = shape
    x = torch.zeros(1, 1, h, w)
    x[0, 0, h // 2, w // 2 + 10] = 1  # a dot 10 px right of the centre
    drawn = float(torch.rand(1, 3, generator=torch.Generator().manual_seed(1))[0, 0] * 2 - 1) * 90  # 46.4
    y = random_affine(x, 0.0, 90.0, torch.Generator().manual_seed(1))[0, 0]
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    dy, dx = float((y * rows).sum() / y.sum()) - h // 2, float((y * cols).sum() / y.sum()) - w // 2
    assert math.hypot(dy, dx) == pytest.approx(10, abs=0.1)  # as far from the centre
    assert -math.degrees(math.atan2(dy, dx)) == pytest.approx(drawn, abs=0.5)  # turned by the angle drawn


def test_a_run_resumed_on_images_of_another_size_is_refused_before_its_weights_load(tmp_path):
    """Lightning restores the weights before the DataModule's state: until 2026-12-06 a run resumed on
    images of another size ended in torch's size-mismatch traceback instead of the data set's line."""
    rng = np.random.default_rng(0)
    trainer = partial(L.Trainer, accelerator="cpu", max_epochs=4, logger=False, enable_checkpointing=False)
    trainer = partial(trainer, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)

    def stage(size: int) -> tuple[AutoencoderModule, ImageDataModule]:
        autoencoder = ConvAutoencoder(1, (size, size), latent_dim=2, channels=(4, 4, 4))
        data = from_arrays(rng.random((50, size, size)), None, "x")
        return AutoencoderModule(autoencoder, partial(torch.optim.Adam, lr=1e-3)), ImageDataModule(data, 10, seed=4)

    with pytest.raises(RuntimeError, match="interrupted"):
        trainer(callbacks=[StopAt12(tmp_path / "last.ckpt")]).fit(*stage(8))
    with pytest.raises(InputError, match=r"resume: the data set changed since the run started \(other files"):
        fit(trainer(), *stage(12), tmp_path)


def test_a_file_name_that_is_not_utf8_is_read_cached_and_written_back_as_its_bytes(tmp_path):
    # a Windows zip's Latin-1 name: until 2026-12-06 the cache key (in_memory=false) failed at once,
    # and in memory the run trained to its end, then failed writing predictions.csv (no metrics.json)
    from deep_clustering.export import write_predictions, write_skipped

    for i in range(3):
        _save(tmp_path / "images" / f"{i}.png", "L", (4, 4), 40 * i)
    latin1 = os.fsdecode(b"\xe9t\xe9.png")  # Python's name for it: surrogates
    Image.new("L", (4, 4), 200).save(os.path.join(tmp_path / "images", latin1), format="PNG")
    (tmp_path / "images" / os.fsdecode(b"bad\xe9.png")).write_bytes(b"not an image")
    data = load_image_folder(
        str(tmp_path / "images"), (4, 4), 1, on_bad_file="skip", in_memory=False, cache_dir=str(tmp_path / "cache")
    )
    assert latin1 in data.files and len(data) == 4
    write_predictions(tmp_path / "p.csv", torch.zeros(4, dtype=torch.long), torch.ones(4), data.files, None)
    write_skipped(tmp_path, data.skipped)
    assert b"\xe9t\xe9.png,0," in (tmp_path / "p.csv").read_bytes()
    assert b"bad\xe9.png" in (tmp_path / "skipped_files.txt").read_bytes()


def test_a_data_set_that_cannot_be_downloaded_is_one_line_and_leaves_no_empty_folder(tmp_path, monkeypatch):
    import torchvision.datasets

    class Offline:  # what torchvision's MNIST does without a network: makes root/MNIST/raw, tries each mirror
        def __init__(self, root: str, train: bool, download: bool) -> None:
            os.makedirs(os.path.join(root, "MNIST", "raw"))
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://a/, got:\n<no network>\n")

    monkeypatch.setattr(torchvision.datasets, "MNIST", Offline)
    with pytest.raises(InputError) as e:
        load_torchvision("MNIST", root=str(tmp_path / "data"))
    # until 2026-12-06 its first line alone, 'cannot load MNIST (Error downloading train-images-idx3-ubyte.gz:'
    assert str(e.value) == (
        f"data.root={tmp_path / 'data'}: cannot load MNIST (Error downloading train-images-idx3-ubyte.gz: Tried "
        f"https://a/, got: <no network>); without a network, put its files in {tmp_path / 'data' / 'MNIST' / 'raw'} "
        "first, or give the arrays as data=npz data.path=FILE.npz"
    )
    assert list(tmp_path.iterdir()) == []  # the folders the attempt made are gone
