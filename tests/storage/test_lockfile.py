"""The SQLite lock file: a second holder is refused with the first one's pid."""

import os

import pytest

from trade_canvas.errors import ConfigError
from trade_canvas.storage.lockfile import hold_lock


def test_second_holder_is_refused_naming_the_pid(tmp_path) -> None:
    db = str(tmp_path / "sub" / "market.db")
    first = hold_lock(db)
    assert (tmp_path / "sub" / "market.db.lock").read_text() == f"{os.getpid()}\n"
    with pytest.raises(ConfigError) as info:
        hold_lock(db)  # flock is per open file: a second open conflicts even in one process
    assert f"in use by another server (pid {os.getpid()}" in str(info.value)
    first.release()
    hold_lock(db).release()  # free again once released
