"""Error paths that need no fixture: files, closed files, panics never reaching Python."""

import numpy as np
import pytest

import nabla


def test_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        nabla.load_vit(tmp_path / "nothing.safetensors", heads=2)


def test_a_closed_file_is_an_os_error(tmp_path):
    p = tmp_path / "w.safetensors"
    p.write_bytes(b"")
    f = open(p, "rb")
    f.close()
    with pytest.raises(OSError, match="closed"):
        nabla.load_vit(f, heads=2)


def test_an_open_file_object_is_read_by_its_name(tmp_path):
    p = tmp_path / "w.safetensors"
    p.write_bytes(b"not a safetensors file")
    with open(p, "rb") as f, pytest.raises(ValueError, match="w.safetensors"):
        nabla.load_vit(f, heads=2)


def test_a_truncated_file_is_a_value_error(tmp_path):
    p = tmp_path / "t.safetensors"
    p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(ValueError, match="t.safetensors"):
        nabla.load_vit(p, heads=2)


def test_a_folder_without_a_model_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="no model.safetensors"):
        nabla.load_vit(tmp_path, heads=2)


def test_version():
    assert isinstance(nabla.__version__, str) and nabla.__version__.count(".") == 2
