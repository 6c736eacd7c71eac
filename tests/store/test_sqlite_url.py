"""A sqlite:/// URL is followed by a relative path, as in SQLAlchemy; the service says where
the file really is, so `sqlite:///tmp/x.db` landing in ./tmp is not a silent surprise."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from choreo.store.sqlite import SqliteDatabase, path_of


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///data/order.db", "data/order.db"),
        ("sqlite:///tmp/x.db", "tmp/x.db"),
        ("sqlite:////tmp/x.db", "/tmp/x.db"),
        ("sqlite:data/x.db", "data/x.db"),
        ("sqlite:/tmp/x.db", "/tmp/x.db"),
    ],
)
def test_the_url_forms_the_docs_list(url: str, path: str) -> None:
    assert path_of(url) == Path(path)


def test_a_relative_file_is_logged_with_its_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tmp").mkdir()
    with caplog.at_level(logging.INFO, logger="choreo.store.sqlite"):
        SqliteDatabase.from_url("sqlite:///tmp/x.db")
    assert str(tmp_path / "tmp" / "x.db") in caplog.text
    assert "relative path" in caplog.text
    assert (tmp_path / "tmp" / "x.db").exists()
