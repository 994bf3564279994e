"""One atomic write helper: whole files or none, unique temporaries, nothing left behind on failure."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from cellgap.core.atomic import folder_replaced, write_atomically


def test_threads_writing_one_file_never_share_a_temporary(tmp_path):
    target = tmp_path / "out.json"
    payloads = [(str(i) * 50_000).encode() for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda data: write_atomically(target, data, durable=True), payloads * 4))
    assert target.read_bytes() in payloads  # one writer's whole content, never a mix
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    target = tmp_path / "state.bin"
    write_atomically(target, "old")

    def parts():
        yield b"new"
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_atomically(target, parts())
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["state.bin"]


def test_a_folder_is_replaced_whole_on_success_and_untouched_on_failure(tmp_path):
    out = tmp_path / "pred"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), folder_replaced(out) as partial:
        (partial / "new.txt").write_text("new")
        raise RuntimeError("the second image failed")
    assert [p.name for p in out.iterdir()] == ["old.txt"] and [p.name for p in tmp_path.iterdir()] == ["pred"]
    with folder_replaced(out) as partial:
        (partial / "new.txt").write_text("new")
        assert not (out / "new.txt").exists()  # nothing appears in the folder until the block succeeds
    assert [p.name for p in out.iterdir()] == ["new.txt"] and [p.name for p in tmp_path.iterdir()] == ["pred"]
    with folder_replaced(tmp_path / "a" / "fresh") as partial:
        (partial / "x").write_text("x")
    assert (tmp_path / "a" / "fresh" / "x").read_text() == "x"
