"""The tar reader gives what Python's tarfile gives, and refuses what is broken."""

import io
import tarfile

import pytest

from distcolor.data.tarstream import tar_members, tar_samples

LONG = "deep/" * 25 + "k0001.jpg"  # > 100 characters: needs a pax, GNU or ustar-prefix name


def make_tar(path, members, fmt):
    with tarfile.open(path, "w", format=fmt) as tar:
        folder = tarfile.TarInfo("folder")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


MEMBERS = [
    ("k0000.jpg", b"\xff\xd8jpeg bytes"),
    ("k0000.json", b'{"a": 1}'),
    (LONG, b"x" * 1000),
    ("sub/k0002.seg.png", b""),
    ("caf\u00e9\nk0003.jpg", b"newline and accent"),  # pax: records cut by length
]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_members_match_pythons_tarfile(tmp_path, fmt):
    path = tmp_path / "s.tar"
    make_tar(path, MEMBERS, fmt)
    with tarfile.open(path) as tar:
        expected = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
    with open(path, "rb") as stream:
        assert list(tar_members(stream)) == expected == MEMBERS


def test_samples_group_members_by_key_up_to_the_first_dot(tmp_path):
    path = tmp_path / "s.tar"
    make_tar(path, MEMBERS, tarfile.PAX_FORMAT)
    errors = []
    samples = list(tar_samples([str(path), f"pipe:cat {path}"], errors.append))
    assert errors == []
    assert [sorted(s) for s in samples[:3]] == [
        ["__key__", "__url__", "jpg", "json"],
        ["__key__", "__url__", "jpg"],
        ["__key__", "__url__", "seg.png"],
    ]
    assert samples[0]["jpg"] == MEMBERS[0][1] and samples[1]["__key__"] == LONG[:-4]
    assert samples[4]["__url__"] == f"pipe:cat {path}" and len(samples) == 8


@pytest.mark.parametrize("damage", ["truncated", "garbage", "cut_at_block"])
def test_broken_tars_are_reported_and_earlier_samples_kept(tmp_path, damage):
    path = tmp_path / "s.tar"
    members = [(f"k{i:04d}.jpg", bytes([i]) * 700) for i in range(6)]
    make_tar(path, members, tarfile.PAX_FORMAT)
    data = path.read_bytes()
    cut = {
        "truncated": data[:6000],  # inside the 4th member (each takes 1536 bytes)
        "garbage": data[:5120] + b"\x07" * 5000,  # the 4th member's header
        "cut_at_block": data[:5120],
    }[damage]
    path.write_bytes(cut)
    errors = []
    samples = list(tar_samples([str(path)], errors.append))
    assert len(errors) == 1 and str(path) in str(errors[0])
    # The sample being read when the error came may lack members: it is dropped too.
    assert [s["__key__"] for s in samples] == ["k0000", "k0001"]
    assert all(s["jpg"] == dict(members)[s["__key__"] + ".jpg"] for s in samples)


def test_a_missing_shard_is_reported(tmp_path):
    errors = []
    assert list(tar_samples([str(tmp_path / "none.tar")], errors.append)) == []
    assert len(errors) == 1
