"""The download helper: resume, restart, checksums, interrupted transfers, safe extraction."""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from mmvae_bench.data.download import (
    RemoteFile,
    download,
    extract_archive,
    fetch_command,
    fetch_remote,
    part_path,
    require_data_dir,
    sha256_file,
    verify_sha256,
)
from mmvae_bench.errors import BenchError
from tests.data.fixtures import serve_directory

PAYLOAD = bytes(range(256)) * 4096 + b"tail"  # ~1 MiB, several read chunks
SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def served(tmp_path: Path) -> Path:
    root = tmp_path / "host"
    root.mkdir()
    (root / "blob.bin").write_bytes(PAYLOAD)
    return root


def test_downloads_and_verifies(served: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "blob.bin"
    with serve_directory(served) as srv:
        assert download(srv.url("blob.bin"), dest, SHA, progress=False) == dest
        assert srv.requests == [("/blob.bin", None)]
    assert dest.read_bytes() == PAYLOAD
    assert not part_path(dest).exists()
    assert sha256_file(dest) == SHA


def test_resumes_partial_file_with_range_request(served: Path, tmp_path: Path) -> None:
    dest = tmp_path / "blob.bin"
    part_path(dest).write_bytes(PAYLOAD[:300_001])
    with serve_directory(served) as srv:
        download(srv.url("blob.bin"), dest, SHA, progress=False)
        assert srv.requests == [("/blob.bin", "bytes=300001-")]
    assert dest.read_bytes() == PAYLOAD
    assert not part_path(dest).exists()


def test_restarts_when_host_ignores_range(served: Path, tmp_path: Path) -> None:
    dest = tmp_path / "blob.bin"
    # Garbage in the .part: appending to it would fail the checksum, a restart does not.
    part_path(dest).write_bytes(b"x" * 5000)
    with serve_directory(served, ranges=False) as srv:
        download(srv.url("blob.bin"), dest, SHA, progress=False)
        assert srv.requests == [("/blob.bin", "bytes=5000-")]
    assert dest.read_bytes() == PAYLOAD


def test_complete_part_refused_range_restarts(served: Path, tmp_path: Path) -> None:
    dest = tmp_path / "blob.bin"
    part_path(dest).write_bytes(PAYLOAD)  # 416 from the host: nothing past this offset
    with serve_directory(served) as srv:
        download(srv.url("blob.bin"), dest, SHA, progress=False)
        assert [r for _, r in srv.requests] == [f"bytes={len(PAYLOAD)}-", None]
    assert dest.read_bytes() == PAYLOAD


def test_checksum_mismatch_deletes_part_and_leaves_no_file(served: Path, tmp_path: Path) -> None:
    dest = tmp_path / "blob.bin"
    wrong = "0" * 64
    with serve_directory(served) as srv, pytest.raises(BenchError) as err:
        download(srv.url("blob.bin"), dest, wrong, progress=False)
    msg = str(err.value)
    assert "blob.bin" in msg and wrong in msg and SHA in msg
    assert not dest.exists()
    assert not part_path(dest).exists()


def test_resumed_garbage_fails_checksum_and_cleans_up(served: Path, tmp_path: Path) -> None:
    dest = tmp_path / "blob.bin"
    part_path(dest).write_bytes(b"x" * 5000)
    with serve_directory(served) as srv, pytest.raises(BenchError, match="checksum mismatch"):
        download(srv.url("blob.bin"), dest, SHA, progress=False)
    assert not dest.exists() and not part_path(dest).exists()


def test_interrupted_transfer_keeps_part_then_resumes(served: Path, tmp_path: Path) -> None:
    dest = tmp_path / "blob.bin"
    with serve_directory(served, cut_after=200_000) as srv:
        with pytest.raises(BenchError, match="resume"):
            download(srv.url("blob.bin"), dest, SHA, progress=False)
        assert not dest.exists()
        assert part_path(dest).stat().st_size == 200_000
        download(srv.url("blob.bin"), dest, SHA, progress=False)
        assert srv.requests[-1] == ("/blob.bin", "bytes=200000-")
    assert dest.read_bytes() == PAYLOAD


def test_web_page_instead_of_file_is_refused(served: Path, tmp_path: Path) -> None:
    dest = tmp_path / "blob.bin"
    with serve_directory(served, content_type="text/html; charset=utf-8") as srv:
        with pytest.raises(BenchError, match="web page"):
            download(srv.url("blob.bin"), dest, None, progress=False)
    assert not dest.exists() and not part_path(dest).exists()


def test_http_error_is_a_bench_error(served: Path, tmp_path: Path) -> None:
    with serve_directory(served) as srv, pytest.raises(BenchError, match="404"):
        download(srv.url("nope.bin"), tmp_path / "nope.bin", None, progress=False)
    assert not (tmp_path / "nope.bin").exists()


def test_verified_existing_file_is_not_downloaded_again(served: Path, tmp_path: Path) -> None:
    dest = tmp_path / "blob.bin"
    dest.write_bytes(PAYLOAD)
    with serve_directory(served) as srv:
        download(srv.url("blob.bin"), dest, SHA, progress=False)
        assert srv.requests == []


def test_wrong_existing_file_is_replaced(served: Path, tmp_path: Path) -> None:
    dest = tmp_path / "blob.bin"
    dest.write_bytes(b"old and wrong")
    with serve_directory(served) as srv:
        download(srv.url("blob.bin"), dest, SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_failed_validation_deletes_download(served: Path, tmp_path: Path) -> None:
    dest = tmp_path / "blob.bin"

    def validate(path: Path) -> None:
        assert path == part_path(dest)  # runs before the file gets its final name
        raise BenchError("not the expected layout")

    with serve_directory(served) as srv, pytest.raises(BenchError, match="expected layout"):
        download(srv.url("blob.bin"), dest, None, progress=False, validate=validate)
    assert not dest.exists() and not part_path(dest).exists()


def test_file_url_and_progress_bar(served: Path, tmp_path: Path) -> None:
    dest = tmp_path / "blob.bin"
    download((served / "blob.bin").as_uri(), dest, SHA, progress=True)
    assert dest.read_bytes() == PAYLOAD


def test_fetch_remote_falls_back_to_next_mirror(served: Path, tmp_path: Path) -> None:
    with serve_directory(served) as srv:
        remote = RemoteFile(
            name="sub/blob.bin", urls=(srv.url("missing.bin"), srv.url("blob.bin")), sha256=SHA
        )
        path = fetch_remote(remote, tmp_path, progress=False)
    assert path == tmp_path / "sub" / "blob.bin" and path.read_bytes() == PAYLOAD


def test_fetch_remote_reports_every_mirror(served: Path, tmp_path: Path) -> None:
    with serve_directory(served) as srv:
        remote = RemoteFile(name="x.bin", urls=(srv.url("a.bin"), srv.url("b.bin")))
        with pytest.raises(BenchError) as err:
            fetch_remote(remote, tmp_path, progress=False)
    assert "a.bin" in str(err.value) and "b.bin" in str(err.value)


def test_verify_sha256_without_checksum_is_not_a_problem(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"abc")
    assert verify_sha256(f, None) is None
    assert verify_sha256(f, hashlib.sha256(b"abc").hexdigest()) is None
    assert "expected" in verify_sha256(f, "1" * 64)


def test_require_data_dir_names_the_fetch_command(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="mmvae-bench data fetch mhd --data-dir DIR"):
        require_data_dir(None, "mhd", ["mhd_train.pt"])
    with pytest.raises(BenchError, match=f"data fetch mhd --data-dir {tmp_path / 'no'}"):
        require_data_dir(tmp_path / "no", "mhd", ["mhd_train.pt"])
    assert fetch_command("polymnist", tmp_path).endswith(str(tmp_path))


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_extracts_zip(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "a.zip", {"top/x.txt": b"x", "top/sub/y.txt": b"y", "z.txt": b"z"})
    tops = extract_archive(archive, tmp_path / "out")
    assert tops == [tmp_path / "out" / "top", tmp_path / "out" / "z.txt"]
    assert (tmp_path / "out" / "top" / "sub" / "y.txt").read_bytes() == b"y"


@pytest.mark.parametrize("name", ["../evil.txt", "/abs/evil.txt", "ok/../../evil.txt"])
def test_zip_escaping_target_is_refused(tmp_path: Path, name: str) -> None:
    archive = _zip(tmp_path / "a.zip", {"fine.txt": b"ok", name: b"evil"})
    with pytest.raises(BenchError, match="outside"):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "out" / "fine.txt").exists()  # checked before anything is written


def _tar(path: Path, add) -> Path:
    with tarfile.open(path, "w") as tf:
        add(tf)
    return path


def test_extracts_tar_and_refuses_links_and_escapes(tmp_path: Path) -> None:
    def good(tf: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("d/f.txt")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"hi"))

    extract_archive(_tar(tmp_path / "g.tar", good), tmp_path / "out")
    assert (tmp_path / "out" / "d" / "f.txt").read_bytes() == b"hi"

    def link(tf: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("d/link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)

    with pytest.raises(BenchError, match="not a regular file"):
        extract_archive(_tar(tmp_path / "l.tar", link), tmp_path / "out2")

    def escape(tf: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("../up.txt")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"u"))

    with pytest.raises(BenchError, match="outside"):
        extract_archive(_tar(tmp_path / "e.tar", escape), tmp_path / "out3")
    assert not (tmp_path / "up.txt").exists()


def test_not_an_archive(tmp_path: Path) -> None:
    (tmp_path / "x.zip").write_bytes(b"PK but not really")
    with pytest.raises(BenchError, match="neither a zip nor a tar"):
        extract_archive(tmp_path / "x.zip", tmp_path / "out")
