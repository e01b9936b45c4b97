import itertools
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distcolor.color import gray_to_lightness
from distcolor.data.loader import (
    EvalStream,
    LoaderState,
    TrainStream,
    build_eval_loader,
    build_train_loader,
    check_train_split,
)
from distcolor.data.shards import read_manifest, shard_list, write_shards
from distcolor.data.sources import Sample, synthetic_samples
from distcolor.errors import UserError


def train_shards(folder):
    return shard_list(folder, read_manifest(folder), "train")


STREAM_ARGS = dict(image_size=32, batch_size=4, shuffle_buffer=8, seed=0, rank=0, world_size=1)


def stream(shards, **kw):
    return TrainStream(shards, **{**STREAM_ARGS, **kw})


def loader(shards, *, num_workers=0, **kw):
    return build_train_loader(shards, num_workers=num_workers, **{**STREAM_ARGS, **kw})


def test_batches_have_the_documented_shapes_and_ranges(tiny_shards):
    batch = next(iter(loader(train_shards(tiny_shards), num_workers=2)))
    assert batch["L"].shape == (4, 1, 32, 32) and batch["L"].dtype == torch.float32
    assert batch["ab"].shape == (4, 2, 32, 32) and batch["ab"].dtype == torch.float32
    assert batch["rgb"].shape == (4, 3, 32, 32) and batch["rgb"].dtype == torch.uint8
    assert batch["L"].min() >= -1 and batch["L"].max() <= 1
    assert batch["ab"].abs().max() <= 1 and batch["ab"].abs().mean() > 0.02  # real colour
    assert len(batch["keys"]) == 4 and batch["skipped"] == 0
    # The input is PIL's grayscale of the very crop the colour target comes from.
    gray = np.stack(
        [
            np.asarray(Image.fromarray(im.permute(1, 2, 0).numpy()).convert("L"))
            for im in batch["rgb"]
        ]
    )
    expected = gray_to_lightness(torch.from_numpy(gray)[:, None].float() / 255)
    assert torch.allclose(batch["L"], expected, atol=1e-5)


def test_ranks_read_disjoint_shards_that_cover_the_split(tiny_shards):
    shards = train_shards(tiny_shards)
    seen = []
    for rank in range(2):
        s = stream(shards, rank=rank, world_size=2)
        mine = s.epoch_shards(0, worker=0, num_workers=1)
        batches = itertools.islice(s._epoch_batches(mine, 0, 0), 100)
        seen.append({k for b in batches for k in b["keys"]})
    assert not seen[0] & seen[1]
    total = sum(c for _, c in shards)
    assert len(seen[0] | seen[1]) >= total - 2 * 3  # all but the dropped partial batches


def test_epochs_reshuffle_and_runs_repeat(tiny_shards):
    shards = train_shards(tiny_shards)
    first = [b["keys"] for b in itertools.islice(iter(stream(shards)), 12)]
    again = [b["keys"] for b in itertools.islice(iter(stream(shards)), 12)]
    other_seed = [b["keys"] for b in itertools.islice(iter(stream(shards, seed=1)), 12)]
    assert first == again and first != other_seed
    per_epoch = sum(c for _, c in shards) // 4
    assert first[:per_epoch] != first[per_epoch : 2 * per_epoch]


def resumed_matches_uninterrupted(shards, *, num_workers, batch_size, skip, first_epoch=0):
    """Take `skip` batches, snapshot LoaderState, resume from it, take 2, resume again: the
    batches after each resume must be exactly the ones the uninterrupted loader gives."""
    start = LoaderState(num_workers, first_epoch=first_epoch)

    def from_state(state):
        return loader(shards, batch_size=batch_size, num_workers=num_workers, state=state)

    full = list(itertools.islice(iter(from_state(start.state_dict())), skip + 6))
    positions = start
    for batch in full[:skip]:
        positions.update(batch)
    resumed = list(itertools.islice(iter(from_state(positions.state_dict())), 2))
    # ...and stop again mid-way: a resumed stream's own positions must resume exactly too.
    for batch in resumed:
        positions.update(batch)
    resumed += list(itertools.islice(iter(from_state(positions.state_dict())), 4))
    for a, b in zip(full[skip:], resumed, strict=True):
        assert a["keys"] == b["keys"] and a["skipped"] == b["skipped"]
        assert torch.equal(a["L"], b["L"]) and torch.equal(a["ab"], b["ab"])


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("num_workers", [0, 2, 3])
@pytest.mark.parametrize("extra", [3, 4])  # odd and even: resume mid-rotation of the workers
def test_resume_gives_exactly_the_batches_that_would_follow(tiny_shards, num_workers, extra):
    shards = train_shards(tiny_shards)
    per_epoch = sum(c for _, c in shards) // 4
    resumed_matches_uninterrupted(
        shards, num_workers=num_workers, batch_size=4, skip=per_epoch + extra
    )  # lands in a later epoch


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("skip", [0, 1, 2])
def test_stream_started_at_a_later_epoch_resumes_before_every_worker_has_delivered(
    tiny_shards, skip
):
    # After a resume that changed the data split, workers start at a fresh epoch; a
    # checkpoint taken before each of them made a batch must keep that epoch.
    shards = train_shards(tiny_shards)
    resumed_matches_uninterrupted(shards, num_workers=3, batch_size=4, skip=skip, first_epoch=2)
    positions = LoaderState(3, first_epoch=2)
    assert positions.next_epoch() == 2


def test_resume_is_exact_with_corrupt_samples(tmp_path):
    samples = list(synthetic_samples(24, size=40, seed=0, quality=90))
    for i in (2, 7, 11, 12, 20):
        bad = samples[i]
        samples[i] = type(bad)(bad.key, bad.jpeg[: len(bad.jpeg) // 3], bad.meta)
    manifest = write_shards(samples, tmp_path, shard_size=6, test_fraction=1e-9, seed=0)
    shards = shard_list(tmp_path, manifest, "train")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for skip in (5, 6, 7):
            resumed_matches_uninterrupted(shards, num_workers=0, batch_size=3, skip=skip)


def test_a_worker_with_nothing_decodable_stops_with_one_line(tmp_path):
    samples = [Sample(f"k{i}", b"not a jpeg", {"source": "x", "sha256": f"h{i}"}) for i in range(8)]
    manifest = write_shards(samples, tmp_path, shard_size=4, test_fraction=1e-9, seed=0)
    batches = loader(shard_list(tmp_path, manifest, "train"), batch_size=2, shuffle_buffer=4)
    positions = LoaderState(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(
            UserError,
            match="^data.shards: loader worker 0 of rank 0 found no 2 "
            "decodable images in a whole epoch$",
        ):
            for batch in batches:
                positions.update(batch)


def corrupt_shards(tmp_path):
    samples = list(synthetic_samples(12, size=40, seed=0, quality=90))
    bad = samples[5]
    samples[5] = type(bad)(bad.key, bad.jpeg[: len(bad.jpeg) // 3], bad.meta)  # truncated JPEG
    manifest = write_shards(samples, tmp_path, shard_size=4, test_fraction=1e-9, seed=0)
    return shard_list(tmp_path, manifest, "train"), bad.key


def test_corrupt_jpeg_in_a_shard_is_skipped_and_counted(tmp_path):
    shards, bad_key = corrupt_shards(tmp_path)
    with pytest.warns(UserWarning, match=f"undecodable image in sample '{bad_key}'"):
        epoch = list(stream(shards, batch_size=1)._epoch_batches(shards, 0, 0))
    assert len(epoch) == 11 and sum(b["skipped"] for b in epoch) == 1
    assert bad_key not in {k for b in epoch for k in b["keys"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evaluated = list(EvalStream(shards, image_size=32, batch_size=5, rank=0, world_size=1))
    assert sum(len(b["keys"]) for b in evaluated) == 11
    assert sum(b["skipped"] for b in evaluated) == 1


def test_corrupt_tar_does_not_crash_the_worker(tmp_path, tiny_shards):
    folder = tmp_path / "s"
    shutil.copytree(tiny_shards, folder)
    shards = train_shards(folder)
    path = shards[0][0]
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:700] + b"\xff" * 3000)  # garbage after the first member
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batches = list(itertools.islice(iter(stream(shards)), 20))
    assert len(batches) == 20
    assert sum(b["skipped"] for b in batches) >= 1


def test_eval_readers_split_samples_disjointly(tiny_shards):
    manifest = read_manifest(tiny_shards)
    shards = shard_list(tiny_shards, manifest, "test")
    keys = []
    for rank in range(2):
        loader = build_eval_loader(
            shards, image_size=32, batch_size=3, num_workers=2, rank=rank, world_size=2
        )
        keys.append([k for b in loader for k in b["keys"]])
    assert not set(keys[0]) & set(keys[1])
    assert len(keys[0]) + len(keys[1]) == manifest["splits"]["test"]["count"]


def test_impossible_splits_name_the_setting(tiny_shards):
    shards = train_shards(tiny_shards)
    with pytest.raises(UserError, match="^data.num_workers: .* cannot feed 4 rank"):
        check_train_split(shards, batch_size=4, world_size=4, num_workers=len(shards))
    with pytest.raises(UserError, match="^data.batch_size: 1000 is more than"):
        check_train_split(shards, batch_size=1000, world_size=1, num_workers=1)
