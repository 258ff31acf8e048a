"""`extmem export` errors that need no transformers: unknown format, transformers missing."""

import sys

from tests.cli_helpers import error_line


def test_unknown_format(tmp_path, capsys):
    line = error_line(capsys, "export", str(tmp_path), "--format", "onnx", "--out",
                      str(tmp_path / "out"))
    assert "'onnx' is not supported; choose hf" in line


def test_missing_transformers_names_the_install_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    line = error_line(capsys, "export", str(tmp_path), "--out", str(tmp_path / "out"))
    assert 'pip install -c constraints.txt -e ".[hf]"' in line
    assert not (tmp_path / "out").exists()
