"""megatron_s1/atomic.py: the target changes only when the writing block succeeds; nothing is left behind."""
import os

import pytest

from megatron_s1.atomic import atomic_open, atomic_path


def test_success_replaces_the_target(tmp_path):
    target = tmp_path / "sub" / "out.txt"  # parent directories are created
    with atomic_open(str(target)) as f:
        f.write("first")
        assert not target.exists()  # nothing visible before the block ends
    with atomic_open(str(target), fsync=True) as f:
        f.write("second ü")
    assert target.read_text(encoding="utf-8") == "second ü"
    assert os.listdir(target.parent) == ["out.txt"]


@pytest.mark.parametrize("mode", ["w", "wb"])
def test_failure_keeps_the_earlier_file_and_leaves_no_temp(tmp_path, mode):
    target = tmp_path / "out"
    target.write_bytes(b"earlier")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_open(str(target), mode) as f:
            f.write("partial" if mode == "w" else b"partial")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"earlier"
    assert os.listdir(tmp_path) == ["out"]


def test_atomic_path_for_writers_that_open_by_name(tmp_path):
    target = tmp_path / "data.bin"
    with pytest.raises(KeyError):
        with atomic_path(str(target)) as tmp:
            open(tmp, "wb").close()
            raise KeyError("x")
    assert os.listdir(tmp_path) == []
    with atomic_path(str(target)) as tmp:
        open(tmp, "wb").write(b"\x01\x02")
    assert target.read_bytes() == b"\x01\x02"
