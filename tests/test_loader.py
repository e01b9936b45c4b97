import io
import itertools
import pickle
import random
import shutil
import tarfile
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distcolor.color import lab_inputs
from distcolor.config import DataConfig
from distcolor.data.batching import decode, recycle_batches, train_view
from distcolor.data.catalog import read_manifest, shard_list
from distcolor.data.loader import (
    PREFETCH,
    EvalStream,
    LoaderState,
    TrainStream,
    build_eval_loader,
    build_train_loader,
    check_train_split,
)
from distcolor.data.sources import Sample
from distcolor.data.streams import Reader
from distcolor.errors import UserError
from tests.helpers import scene_samples, write_sample_shards

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create")


def train_shards(folder):
    return shard_list(folder, read_manifest(folder), "train")


DATA = dict(image_size=32, batch_size=4, shuffle_buffer=8, num_workers=0)


def stream(shards, *, seed=0, rank=0, world_size=1, state=None, **data):
    """A TrainStream of `data` settings (DataConfig keys) over DATA's."""
    place = dict(seed=seed, rank=rank, world_size=world_size, state=state)
    return TrainStream(shards, DataConfig(**{**DATA, **data}), **place)


def loader(shards, *, seed=0, rank=0, world_size=1, state=None, **data):
    place = dict(seed=seed, rank=rank, world_size=world_size, state=state)
    return build_train_loader(shards, DataConfig(**{**DATA, **data}), **place)


def take(iterable, n):
    return list(itertools.islice(iter(iterable), n))


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory):
    """A big source (60 scenes) and a small one (12), in shards of 6."""
    folder = tmp_path_factory.mktemp("mix")
    big = scene_samples(60, seed=1, source="big")
    small = scene_samples(12, seed=2, source="small")
    return write_sample_shards(folder, {"big": big, "small": small}, shard_size=6)


def test_batches_are_uint8_crops_whose_gray_is_pils(tiny_shards):
    batch = next(iter(loader(train_shards(tiny_shards), num_workers=2)))
    assert batch["gray"].shape == (4, 1, 32, 32) and batch["gray"].dtype == torch.uint8
    assert batch["rgb"].shape == (4, 3, 32, 32) and batch["rgb"].dtype == torch.uint8
    assert len(batch["keys"]) == 4 and batch["skipped"] == 0
    assert batch["sources"] == ["synthetic"] * 4
    # The input is PIL's grayscale of the very crop the colour target comes from.
    gray = [
        np.asarray(Image.fromarray(im.permute(1, 2, 0).numpy()).convert("L")) for im in batch["rgb"]
    ]
    assert np.array_equal(batch["gray"][:, 0].numpy(), np.stack(gray))
    lightness, chroma = lab_inputs(batch, torch.device("cpu"))
    assert lightness.shape == (4, 1, 32, 32) and chroma.shape == (4, 2, 32, 32)
    assert lightness.min() >= -1 and lightness.max() <= 1
    assert chroma.abs().max() <= 1 and chroma.abs().mean() > 0.02  # real colour


def epoch_keys(shards, *, rank, world, worker, workers, epochs=3):
    """Keys one reader takes in each of its first epochs, read straight from its stream."""
    s = stream(shards, rank=rank, world_size=world)
    reader = Reader(s, worker, workers, {})
    keys = [[] for _ in range(epochs)]
    for sample, _, _ in reader:
        epoch = reader.streams["*"].position[0] if reader.streams["*"].position[1] else None
        if epoch is None or epoch >= epochs:
            return keys
        keys[epoch].append(sample["__key__"])


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    """9 shards of 6, 6, 6, 6, 6, 5, 4, 3 and 2 samples."""
    folder = tmp_path_factory.mktemp("uneven")
    samples = scene_samples(44, size=36)
    by_source = {"a": samples[:30], "b": samples[30:35], "c": samples[35:39], "d": samples[39:42]}
    shards = write_sample_shards(folder, by_source, shard_size={"a": 6, "b": 5, "c": 4, "d": 3})
    extra = write_sample_shards(folder / "e", {"e": samples[42:]}, shard_size=2)
    return shards + extra


@pytest.mark.parametrize("world,workers", [(2, 1), (3, 1), (2, 2), (3, 2)])
def test_every_reader_gets_an_equal_disjoint_part_of_each_epoch(uneven, world, workers):
    # Uneven shards over 2 or 3 ranks x 1 or 2 workers: in every epoch each reader takes
    # the same number of samples (so all stay in step), no two take the same sample, and
    # less than one shard per reader is left out.
    total = sum(s.count for s in uneven)
    readers = [
        epoch_keys(uneven, rank=r, world=world, worker=w, workers=workers)
        for r in range(world)
        for w in range(workers)
    ]
    for epoch in range(3):
        keys = [reader[epoch] for reader in readers]
        assert len({len(k) for k in keys}) == 1
        flat = [k for ks in keys for k in ks]
        assert len(flat) == len(set(flat)) > total - len(readers) * 6


def test_epochs_reshuffle_and_runs_repeat(tiny_shards):
    shards = train_shards(tiny_shards)
    first = [b["keys"] for b in take(stream(shards), 12)]
    again = [b["keys"] for b in take(stream(shards), 12)]
    other_seed = [b["keys"] for b in take(stream(shards, seed=1), 12)]
    assert first == again and first != other_seed
    per_epoch = sum(s.count for s in shards) // 4
    assert first[:per_epoch] != first[per_epoch : 2 * per_epoch]


def test_epoch_mode_reads_each_sample_once_per_epoch(tiny_shards):
    shards = train_shards(tiny_shards)
    total = sum(s.count for s in shards)
    keys = [k for b in take(stream(shards, batch_size=3), 2 * total // 3) for k in b["keys"]]
    assert sorted(keys[:total]) == sorted(keys[total:]) and len(set(keys[:total])) == total


def test_resampled_source_weights_set_the_mix(two_sources):
    weights = {"big": 1.0, "small": 1.0}  # 60 vs 12 images, asked for half and half
    batches = take(
        stream(two_sources, sampling="resampled", source_weights=weights, batch_size=8), 50
    )
    mix = Counter(s for b in batches for s in b["sources"])
    assert abs(mix["small"] / 400 - 0.5) < 0.08
    natural = take(stream(two_sources, sampling="resampled", batch_size=8), 50)
    mix = Counter(s for b in natural for s in b["sources"])
    assert abs(mix["small"] / 400 - 12 / 72) < 0.08  # unweighted: proportional to size
    only = take(stream(two_sources, sampling="resampled", source_weights={"small": 1}), 5)
    assert {s for b in only for s in b["sources"]} == {"small"}


def test_the_achieved_mix_is_tracked(two_sources):
    positions = LoaderState(0)
    for batch in take(
        loader(two_sources, sampling="resampled", source_weights={"big": 3, "small": 1}), 20
    ):
        positions.update(batch)
    assert sum(positions.mix.values()) == 80 and positions.mix["big"] > positions.mix["small"]
    restored = LoaderState(0)
    restored.load_state_dict(positions.state_dict())
    assert restored.mix == positions.mix


def resumed_matches_uninterrupted(shards, *, num_workers, batch_size, skip, start=None, **kw):
    """Take `skip` batches, snapshot LoaderState, resume from it, take 2, resume again: the
    batches after each resume must be exactly the ones the uninterrupted loader gives."""
    start = start or LoaderState(num_workers)

    def from_state(state):
        return loader(shards, batch_size=batch_size, num_workers=num_workers, state=state, **kw)

    full = take(from_state(start.state_dict()), skip + 6)
    positions = start
    for batch in full[:skip]:
        positions.update(batch)
    resumed = take(from_state(positions.state_dict()), 2)
    # ...and stop again mid-way: a resumed stream's own positions must resume exactly too.
    for batch in resumed:
        positions.update(batch)
    resumed += take(from_state(positions.state_dict()), 4)
    for a, b in zip(full[skip:], resumed, strict=True):
        assert a["keys"] == b["keys"] and a["skipped"] == b["skipped"]
        assert torch.equal(a["rgb"], b["rgb"]) and torch.equal(a["gray"], b["gray"])


@pytest.mark.parametrize("num_workers", [0, 2, 3])
@pytest.mark.parametrize("extra", [3, 4])  # odd and even: resume mid-rotation of the workers
def test_resume_gives_exactly_the_batches_that_would_follow(tiny_shards, num_workers, extra):
    shards = train_shards(tiny_shards)
    per_epoch = sum(s.count for s in shards) // 4
    resumed_matches_uninterrupted(
        shards, num_workers=num_workers, batch_size=4, skip=per_epoch + extra
    )  # lands in a later epoch


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resampled_weighted_stream_resumes_exactly(two_sources, num_workers):
    resumed_matches_uninterrupted(
        two_sources,
        num_workers=num_workers,
        batch_size=4,
        skip=23,
        sampling="resampled",
        source_weights={"big": 1.0, "small": 2.0},
    )


@pytest.mark.parametrize("skip", [0, 1, 2])
def test_stream_started_at_a_later_round_resumes_before_every_worker_has_delivered(
    tiny_shards, skip
):
    # After a resume that changed the data split, workers start at a fresh epoch; a
    # checkpoint taken before each of them made a batch must keep that epoch.
    shards = train_shards(tiny_shards)
    later = LoaderState(3, first_round={"*": 2})
    resumed_matches_uninterrupted(shards, num_workers=3, batch_size=4, skip=skip, start=later)
    assert LoaderState(3, first_round={"*": 2}).next_rounds() == {"*": 2}


def truncate(sample: Sample) -> Sample:
    return Sample(sample.key, sample.jpeg[: len(sample.jpeg) // 3], sample.meta)


def test_resume_is_exact_with_corrupt_samples(tmp_path):
    samples = scene_samples(24)
    for i in (2, 7, 11, 12, 20):
        samples[i] = truncate(samples[i])
    shards = write_sample_shards(tmp_path, {"synthetic": samples}, shard_size=6)
    data = Path(shards[2].url).read_bytes()
    Path(shards[2].url).write_bytes(data[: len(data) // 2])  # and a truncated tar
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for skip in (2, 5, 6, 7):  # errors met before the stop are not counted twice
            resumed_matches_uninterrupted(shards, num_workers=0, batch_size=3, skip=skip)
            resumed_matches_uninterrupted(
                shards, num_workers=2, batch_size=3, skip=skip, sampling="resampled"
            )


def test_a_worker_with_nothing_decodable_stops_with_one_line(tmp_path):
    samples = [Sample(f"k{i}", b"not a jpeg", {}) for i in range(8)]
    shards = write_sample_shards(tmp_path, {"x": samples}, shard_size=4)
    for sampling in ("epochs", "resampled"):
        positions = LoaderState(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(
                UserError,
                match=f"^data.shards: loader worker 0 of rank 0 found no decodable image in "
                f"\\d+ whole round\\(s\\) of {sampling} sampling$",
            ):
                for batch in loader(shards, batch_size=2, sampling=sampling):
                    positions.update(batch)


def test_corrupt_jpeg_in_a_shard_is_skipped_and_counted(tmp_path):
    samples = scene_samples(12)
    samples[5] = truncate(samples[5])
    shards = write_sample_shards(tmp_path, {"synthetic": samples}, shard_size=4)
    with pytest.warns(UserWarning, match="undecodable image in sample 'synthetic-0005'"):
        batches = take(stream(shards, batch_size=1), 22)  # two epochs of 11 good samples
    assert sum(b["skipped"] for b in batches) == 2
    assert "synthetic-0005" not in {k for b in batches for k in b["keys"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evaluated = list(EvalStream(shards, image_size=32, batch_size=5, rank=0, world_size=1))
    assert sum(len(b["keys"]) for b in evaluated) == 11
    assert sum(b["skipped"] for b in evaluated) == 1


def test_truncated_tar_is_skipped_and_counted(tmp_path, tiny_shards):
    folder = tmp_path / "s"
    shutil.copytree(tiny_shards, folder)
    shards = train_shards(folder)
    data = Path(shards[0].url).read_bytes()
    Path(shards[0].url).write_bytes(data[: len(data) // 2])  # cut mid-member
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batches = take(stream(shards), 20)
    assert len(batches) == 20
    assert sum(b["skipped"] for b in batches) >= 1


def test_a_shard_with_pickled_members_is_refused_never_unpickled(tmp_path):
    class Exploit:
        def __reduce__(self):  # what a malicious .pyd member does when unpickled
            return (Path.write_text, (tmp_path / "pwned", "code ran"))

    good = scene_samples(8)
    write_sample_shards(tmp_path, {"synthetic": good}, shard_size=4)
    shards = train_shards(tmp_path)
    # Re-write the second shard with a pickled member in its first sample.
    with tarfile.open(shards[1].url, "w") as tar:
        for i, s in enumerate(good[4:]):
            members = {"jpg": s.jpeg} | ({"pyd": pickle.dumps(Exploit())} if i == 0 else {})
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{s.key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    with pytest.warns(
        UserWarning,
        match="refusing .*train-synthetic-000001.tar: it carries pickled member synthetic-0004.pyd",
    ):
        batches = take(stream(shards, batch_size=1), 4)
    assert {k for b in batches for k in b["keys"]} == {s.key for s in good[:4]}
    assert sum(b["skipped"] for b in batches) == 1
    assert not (tmp_path / "pwned").exists()


def test_shards_are_read_from_brace_patterns_and_pipe_urls(tiny_shards, tmp_path):
    manifest = read_manifest(tiny_shards)
    local = shard_list(tiny_shards, manifest, "train")
    n = len(local) - 1
    pattern = f"{tiny_shards}/train-synthetic-{{000000..{n:06d}}}.tar"
    braced = shard_list(tiny_shards, manifest, "train", urls=pattern)
    assert [s.url for s in braced] == [s.url for s in local]
    piped = shard_list(tiny_shards, manifest, "train", urls=f"pipe:cat {pattern}")
    assert piped[0].url == f"pipe:cat {local[0].url}" and piped[0].count == local[0].count
    assert [b["keys"] for b in take(stream(piped), 5)] == [
        b["keys"] for b in take(stream(local), 5)
    ]
    with pytest.raises(UserError, match="^data.train_urls: 'elsewhere/x.tar' names no train "):
        shard_list(tiny_shards, manifest, "train", urls="elsewhere/x.tar")
    with pytest.raises(UserError, match="^data.train_urls: .*train-synthetic-000001.tar does "):
        shard_list(tiny_shards, manifest, "train", urls=f"{tmp_path}/train-synthetic-000001.tar")


def test_big_jpegs_are_draft_decoded_small_ones_fully():
    big = io.BytesIO()
    Image.new("RGB", (800, 600), (200, 30, 40)).save(big, "JPEG")
    assert decode(big.getvalue(), 144).size == (200, 150)  # 1/4 scale: shorter side 150 >= 144
    assert decode(big.getvalue(), 0).size == (800, 600)
    assert decode(big.getvalue(), 400).size == (800, 600)
    assert decode(b"garbage", 10) is None


def test_images_stored_at_the_jitter_size_are_cropped_without_resizing():
    rng = np.random.default_rng(0)
    stored = Image.fromarray(rng.integers(0, 255, (40, 36, 3), dtype=np.uint8))  # 36 = 32 x 1.125
    crop = train_view(stored, 32, random.Random(3))
    pixels = np.asarray(stored)
    windows = [pixels[y : y + 32, x : x + 32] for y in range(40 - 31) for x in range(36 - 31)]
    got = np.asarray(crop)
    assert any(np.array_equal(got, w) or np.array_equal(got, w[:, ::-1]) for w in windows)


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


def test_impossible_splits_name_the_setting(tiny_shards, two_sources):
    shards = train_shards(tiny_shards)
    with pytest.raises(UserError, match="^data.num_workers: .* cannot feed 4 rank"):
        check_train_split(shards, DataConfig(batch_size=4, num_workers=len(shards)), world_size=4)
    with pytest.raises(UserError, match="^data.batch_size: 1000 is more than"):
        check_train_split(shards, DataConfig(batch_size=1000, num_workers=1), world_size=1)
    # Resampling needs no shard per reader.
    resampled = DataConfig(batch_size=4, num_workers=len(shards), sampling="resampled")
    check_train_split(shards, resampled, world_size=4)
    with pytest.raises(
        UserError,
        match="^data.source_weights: no train shards of faces "
        r"\(sources: big, small\)$",
    ):
        weighted = DataConfig(
            batch_size=4, num_workers=1, sampling="resampled", source_weights={"faces": 1.0}
        )
        check_train_split(two_sources, weighted, world_size=1)


def test_recycled_buffers_are_reused_only_after_release(tiny_shards):
    shards = train_shards(tiny_shards)
    plain = [
        {k: b[k].clone() for k in ("rgb", "gray")} | {"buffer": b["buffer"]}
        for b in take(loader(shards, num_workers=2), 30)
    ]
    recycled = []
    for batch in itertools.islice(recycle_batches(loader(shards, num_workers=2)), 30):
        recycled.append(
            {k: batch[k].clone() for k in ("rgb", "gray")} | {"buffer": batch["buffer"]}
        )
    for a, b in zip(plain, recycled, strict=True):
        assert torch.equal(a["rgb"], b["rgb"]) and torch.equal(a["gray"], b["gray"])
    # Kept batches are never overwritten: past the pool, each gets a buffer of its own.
    assert [b["buffer"] for b in plain[-10:]] == [None] * 10
    # Released ones are refilled: every batch came from the worker's small pool.
    assert all(b["buffer"] is not None for b in recycled)
    assert len({b["buffer"] for b in recycled}) <= PREFETCH + 2


def test_buffers_are_released_through_the_pin_memory_step(tiny_shards, monkeypatch):
    # On CUDA the DataLoader replaces every tensor of a batch by a pinned copy; the release
    # handle must still reach the worker's own flag. (Pinning is simulated by a copy.)
    from torch.utils.data._utils.pin_memory import pin_memory

    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a, **k: self.clone())
    batches = (pin_memory(b) for b in loader(train_shards(tiny_shards), num_workers=1))
    buffers = [b["buffer"] for b in take(recycle_batches(batches), 20)]
    assert None not in buffers and len(set(buffers)) <= PREFETCH + 2
