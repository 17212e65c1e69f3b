"""A detached container's log: records, rotation at the cap, following a rotation (logs.py)."""

from __future__ import annotations

import os
from pathlib import Path

from fastdist.logs import LogWriter, parse_log_line
from fastdist.runc import Runtime


# --- the detached log ---------------------------------------------------------------------
def test_log_records_keep_streams_lines_and_bytes(tmp_path: Path) -> None:
    log = LogWriter(tmp_path / "log")
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    readers = [log.follow(r1, "stdout"), log.follow(r2, "stderr")]
    os.write(w1, b"one\ntwo")
    os.write(w1, b" halves\n\xff\xfebinary\n" + b"x" * 40000)
    os.close(w1)
    os.write(w2, b"err\n")
    os.close(w2)
    for t in readers:
        t.join()
    log.close()
    entries = [parse_log_line(line) for line in (tmp_path / "log").read_bytes().splitlines()]
    out = [e.data for e in entries if e.stream == "stdout"]
    assert out[:3] == [b"one\n", b"two halves\n", b"\xff\xfebinary\n"]
    assert [len(d) for d in out[3:]] == [16384, 16384, 40000 - 32768]  # long lines in pieces
    assert [e.data for e in entries if e.stream == "stderr"] == [b"err\n"]
    assert all(e.time > 0 for e in entries)


def test_the_log_rotates_at_its_cap_and_reads_back_whole_across_both_files(
    tmp_path: Path,
) -> None:
    rt = Runtime(tmp_path / "store")
    b = rt.prepare("chatty")
    log = LogWriter(b / "log", max_bytes=4096)
    lines = [f"line {i:05d}\n".encode() for i in range(2000)]
    for line in lines:
        log.write("stdout" if len(line) % 2 else "stderr", line)
    log.close()
    sizes = [(b / name).stat().st_size for name in ("log", "log.1")]
    assert all(0 < size <= 4096 for size in sizes), sizes  # each file within the cap
    assert sum(sizes) > 4096  # both kept: the newest output in log, the one before in log.1
    got = [e.data for e in rt.log_entries("chatty")]
    assert got == lines[-len(got) :]  # a contiguous suffix, ending with the last line written
    held = sum((b / name).read_bytes().count(b"\n") for name in ("log", "log.1"))
    assert len(got) == held  # every record both files hold, read once
    assert [e.data for e in rt.log_entries("chatty", tail=3)] == lines[-3:]
    tail_all = [e.data for e in rt.log_entries("chatty", tail=len(got) + 5)]
    assert tail_all == got  # tail reaches into log.1
    # a restarted container's new writer appends and keeps counting from the file's size
    again = LogWriter(b / "log", max_bytes=4096)
    again.write("stdout", b"after restart\n")
    again.close()
    assert (b / "log").stat().st_size <= 4096
    assert [e.data for e in rt.log_entries("chatty", tail=1)] == [b"after restart\n"]


def test_logs_follow_a_rotation_to_the_new_file_without_losing_lines(tmp_path: Path) -> None:
    import fcntl

    rt = Runtime(tmp_path / "store")
    b = rt.prepare("chatty")
    log = LogWriter(b / "log", max_bytes=4096)
    lock = os.open(b / "supervisor.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)  # as a live supervisor holds it: follow goes on at EOF
    lines = [f"line {i:05d}\n".encode() for i in range(90)]
    try:
        for line in lines[:10]:
            log.write("stdout", line)
        following = rt.log_entries("chatty", follow=True)
        assert [next(following).data for _ in range(10)] == lines[:10]
        for line in lines[10:]:  # ~65 records fit in 4 KiB: exactly one rotation
            log.write("stdout", line)
        assert (b / "log.1").exists()
        assert [next(following).data for _ in range(80)] == lines[10:]
    finally:
        log.close()
        fcntl.flock(lock, fcntl.LOCK_UN)  # the supervisor is gone: follow ends
        os.close(lock)
    assert list(following) == []


def test_a_raw_log_line_reads_as_stdout() -> None:
    assert parse_log_line(b"plain text") == parse_log_line(b"plain text")
    entry = parse_log_line(b"plain text")
    assert (entry.stream, entry.data) == ("stdout", b"plain text")
    assert parse_log_line(b'{"s": "other"}').stream == "stdout"
