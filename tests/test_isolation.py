"""The test suite keeps its hands off the user's files: the isolation fixture and its check.

These guard the guard: if ``isolated_home`` stopped redirecting a location, or the session
check could no longer see a change, a developer's settings would again drift silently.
"""

from pathlib import Path

import conftest
from conftest import REAL_HOME, changes, snapshot


def _under(path, folder) -> bool:
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


def test_user_locations_point_into_the_tests_tmp(isolated_home, tmp_path_factory):
    from napari_itermask._settings import load_settings, save_settings, settings_path
    from napari_itermask.models import user_dir

    scratch = isolated_home.root
    assert _under(scratch, tmp_path_factory.getbasetemp())  # pytest's folder for this run
    assert _under(Path.home(), scratch) and not _under(Path.home(), REAL_HOME)
    assert _under(settings_path(), scratch)
    assert _under(user_dir(), scratch)
    assert save_settings({"model": "t1"})
    assert (isolated_home.itermask_config / "settings.json").is_file()
    assert load_settings()["model"] == "t1"


def test_every_test_starts_from_the_default_settings():
    from napari_itermask._settings import DEFAULTS, load_settings

    # the test above stored "t1"; a fresh tmp folder per test means it did not leak here
    assert load_settings() == DEFAULTS


def test_napari_settings_are_never_the_users(isolated_home, tmp_path):
    import napari.settings as napari_settings
    from napari.settings import get_settings

    cfg = get_settings().config_path
    allowed = (isolated_home.root, conftest._SESSION_SCRATCH)
    assert cfg is None or any(_under(cfg, a) for a in allowed), cfg
    assert any(_under(napari_settings._CFG_PATH, a) for a in allowed)
    assert not any(_under(cfg or napari_settings._CFG_PATH, p) for p in conftest.REAL_LOCATIONS)
    assert not any(tmp_path.iterdir())  # the isolation leaves the test's own folder empty


def test_the_real_home_check_sees_every_kind_of_change(tmp_path):
    watched = tmp_path / "watched"
    (watched / "sub").mkdir(parents=True)
    (watched / "settings.json").write_text("{}")
    (watched / "sub" / "old.txt").write_text("x")
    before = snapshot([watched, tmp_path / "not-yet"])
    assert changes(before, snapshot([watched, tmp_path / "not-yet"])) == []
    (watched / "settings.json").write_text('{"model": "t1"}')
    (watched / "sub" / "old.txt").unlink()
    (tmp_path / "not-yet").mkdir()
    found = changes(before, snapshot([watched, tmp_path / "not-yet"]))
    assert f"modified {watched / 'settings.json'}" in found
    assert f"removed {watched / 'sub' / 'old.txt'}" in found
    assert f"created {tmp_path / 'not-yet'}" in found


def test_the_watched_locations_are_the_plugins_and_naparis():
    from napari.utils._base import _DEFAULT_CONFIG_PATH

    env = conftest._REAL_ENV
    config = Path(env.get("XDG_CONFIG_HOME") or REAL_HOME / ".config")
    data = Path(env.get("XDG_DATA_HOME") or REAL_HOME / ".local" / "share")
    watched = conftest.REAL_LOCATIONS
    assert config / "napari-itermask" in watched and data / "napari-itermask" in watched
    assert Path(_DEFAULT_CONFIG_PATH).parent in watched


def test_napari_writes_its_cache_in_the_scratch_folder_not_the_users():
    """napari writes theme files under XDG_CACHE_HOME on import; the real one is watched."""
    from napari.utils._platformdirs import user_cache_dir

    env = conftest._REAL_ENV
    real_cache = Path(env.get("XDG_CACHE_HOME") or REAL_HOME / ".cache") / "napari"
    assert real_cache in conftest.REAL_LOCATIONS
    used = Path(user_cache_dir())
    assert _under(used, conftest._SESSION_SCRATCH) and not _under(used, real_cache), used
