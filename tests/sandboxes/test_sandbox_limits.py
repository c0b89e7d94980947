"""Pure parts: limit validation, file-name checks, the frame format. No sandbox started."""
from __future__ import annotations

import dataclasses
import json
import marshal

import pytest

from sandboxes import STATUSES, Limits, SandboxResult
from sandboxes._worker import FrameDecoder, encode_frame, reply_frame, to_json
from sandboxes.pool import normalize_files


def test_limits_defaults_are_plain_values_with_defaults():
    limits = Limits()
    for field in dataclasses.fields(Limits):
        assert field.default is not dataclasses.MISSING, field.name
        assert type(getattr(limits, field.name)) in (int, float, str, bool), field.name
    assert limits.backend == "bwrap"
    assert limits.validate() is limits


@pytest.mark.parametrize("field, value", [
    ("wall_s", 0), ("wall_s", "10"), ("cpu_s", 0), ("cpu_s", 1.5), ("memory_mb", 8),
    ("max_processes", 0), ("max_output_bytes", -1), ("max_open_files", 3), ("tmp_mb", 0),
    ("backend", "docker"), ("cpu_s", True),
])
def test_limits_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        Limits(**{field: value}).validate()


def test_statuses_are_the_documented_ones():
    assert set(STATUSES) == {"ok", "error", "timeout", "memory", "output_limit", "sandbox_error"}
    assert SandboxResult("ok", 0, "", "", 0.1).ok
    assert not SandboxResult("error", 1, "", "", 0.1).ok


def test_files_are_normalized_and_encoded():
    files = normalize_files({"a.txt": "héllo", "./sub/b.bin": b"\x00\x01"}, Limits())
    assert files == [("a.txt", "héllo".encode()), ("sub/b.bin", b"\x00\x01")]
    assert normalize_files(None, Limits()) == []


@pytest.mark.parametrize("name", ["/etc/passwd", "../escape", "a/../../b", "", ".", "solution.py",
                                  "x\0y", "a" * 300])
def test_bad_file_names_are_refused(name):
    with pytest.raises(ValueError):
        normalize_files({name: "x"}, Limits())


def test_files_conflicts_and_size_are_refused():
    with pytest.raises(ValueError, match="both a file and a directory"):
        normalize_files({"a": "x", "a/b": "y"}, Limits())
    with pytest.raises(ValueError, match="tmp_mb"):
        normalize_files({"big": b"x" * (2 * 1024 * 1024)}, Limits(tmp_mb=1))
    with pytest.raises(TypeError):
        normalize_files({"a": 3}, Limits())


def test_frames_round_trip_both_directions():
    blobs = [b"print(1)", b"", b"\x00" * 5]
    job = {"limits": Limits().to_wire(), "files": ["x"], "sizes": [len(b) for b in blobs]}
    decoder = FrameDecoder(100, marshal.loads)
    data = encode_frame(marshal.dumps(job), blobs)
    for i in range(len(data)):  # byte by byte: frames may arrive in any pieces
        assert decoder.frame() is None
        decoder.feed(data[i:i + 1])
    header, got = decoder.frame()
    assert header == job and got == blobs and decoder.empty()

    reply = {"status": "ok", "detail": 'quote " backslash \\ newline \n tab \t é', "cpu_s": 0.25,
             "exit_code": None, "flag": True}
    decoder = FrameDecoder(100, json.loads)
    decoder.feed(reply_frame(reply, [b"out", b"err"]))
    header, got = decoder.frame()
    assert got == [b"out", b"err"]
    assert {k: header[k] for k in reply} == reply
    assert json.loads(to_json(reply)) == reply


def test_frame_decoder_refuses_oversized_and_malformed_frames():
    decoder = FrameDecoder(10, json.loads)
    decoder.feed(reply_frame({"status": "ok"}, [b"x" * 11]))
    with pytest.raises(ValueError, match="exceeds"):
        decoder.frame()
    decoder = FrameDecoder(10, json.loads)
    decoder.feed(encode_frame(b'{"sizes": [-1]}'))
    with pytest.raises(ValueError):
        decoder.frame()
    decoder = FrameDecoder(10, json.loads)
    decoder.feed((2 ** 31).to_bytes(4, "big"))
    with pytest.raises(ValueError, match="header"):
        decoder.frame()
