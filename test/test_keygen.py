"""ais/keygen.py: writing and loading the ring key."""
from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ais.config import ConfigError
from ais.keygen import AUTHKEY_SIZE, AuthKeyError, load_authkey, main

REPO = Path(__file__).resolve().parent.parent


def test_writes_128_bytes_mode_0400(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "etc" / "ais" / "authkey"  # parent directories are created
    assert main(["-o", str(key)]) == 0
    st = key.stat()
    assert stat.S_IMODE(st.st_mode) == 0o400
    assert st.st_size == AUTHKEY_SIZE == 128
    assert str(key) in capsys.readouterr().out
    assert load_authkey(str(key)) == key.read_bytes()


def test_keys_differ(tmp_path: Path) -> None:
    assert main(["-o", str(tmp_path / "a")]) == 0
    assert main(["-o", str(tmp_path / "b")]) == 0
    assert (tmp_path / "a").read_bytes() != (tmp_path / "b").read_bytes()


def test_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "authkey"
    assert main(["-o", str(key)]) == 0
    before = key.read_bytes()
    capsys.readouterr()
    assert main(["-o", str(key)]) == 1
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err and err.count("\n") == 1
    assert key.read_bytes() == before


def test_force_replaces_read_only_key(tmp_path: Path) -> None:
    key = tmp_path / "authkey"
    assert main(["-o", str(key)]) == 0
    before = key.read_bytes()
    assert main(["-o", str(key), "--force"]) == 0
    assert key.read_bytes() != before
    assert stat.S_IMODE(key.stat().st_mode) == 0o400
    assert sorted(os.listdir(tmp_path)) == ["authkey"]  # no temporary file left


def test_parent_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "etc").write_text("")
    assert main(["-o", str(tmp_path / "etc" / "ais" / "authkey")]) == 1
    assert main(["-o", str(tmp_path / "etc" / "authkey")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all("cannot write" in line for line in err), err


def test_unwritable_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    # root may write anywhere on disk, but not into /proc
    target = Path("/proc/ais-keygen-test/authkey") if os.geteuid() == 0 else locked / "authkey"
    try:
        assert main(["-o", str(target)]) == 1
        assert "cannot write" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


def test_python_dash_m(tmp_path: Path) -> None:
    key = tmp_path / "authkey"
    done = subprocess.run([sys.executable, "-m", "ais.keygen", "-o", str(key)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert key.stat().st_size == 128


@pytest.mark.parametrize("content, words", [
    (b"x" * 12, "key is 12 bytes, need 128"),
    (b"", "key is 0 bytes, need 128"),
    (b"x" * 200, "key is more than 128 bytes, need 128"),
])
def test_load_rejects_wrong_size(tmp_path: Path, content: bytes, words: str) -> None:
    key = tmp_path / "authkey"
    key.write_bytes(content)
    with pytest.raises(AuthKeyError) as info:
        load_authkey(str(key))
    assert str(info.value).startswith(f"{key}: {words}")
    assert isinstance(info.value, ConfigError)  # aisexec reports both the same way


def test_load_missing_key(tmp_path: Path) -> None:
    with pytest.raises(AuthKeyError) as info:
        load_authkey(str(tmp_path / "authkey"))
    assert str(info.value) == f"{tmp_path / 'authkey'}: cannot read key: No such file or directory"


def test_load_directory(tmp_path: Path) -> None:
    with pytest.raises(AuthKeyError, match="not a regular file"):
        load_authkey(str(tmp_path))


def test_load_warns_about_loose_mode(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    key = tmp_path / "authkey"
    key.write_bytes(bytes(128))
    key.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="ais.keygen"):
        assert load_authkey(str(key)) == bytes(128)
    assert "readable by group or others" in caplog.text
