"""Server-free parts of the forwarder: gap arithmetic on stream positions, the catch-up range, the settings
(selection, authentication, secrets), and the CLI's configuration errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from studyin_analytics.aggregator.lrs.catchup import CatchUp, StreamPosition, before, parse_id
from studyin_analytics.aggregator.lrs.settings import LrsSettings
from studyin_analytics.instrumentation.settings_base import ConfigurationError

BASE = {
    "lrs_url": "https://user:pw-secret@lrs.example/xAPI/",
    "lrs_iri_base": "https://xapi.studyin.test",
    "lrs_home_page": "https://studyin.test",
}


def settings(**changes: object) -> LrsSettings:
    return LrsSettings.model_validate({**BASE, **changes})


ids = st.tuples(st.integers(0, 2**40), st.integers(0, 2**20))


@given(entry=ids)
def test_before_is_the_id_just_before(entry: tuple[int, int]) -> None:
    if entry == (0, 0):
        assert before(entry) == "0-0"
        return
    previous = parse_id(before(entry))
    assert previous < entry
    ms, seq = previous
    assert (ms, seq + 1) == entry or (ms + 1 == entry[0] and entry[1] == 0 and seq == 2**64 - 1)


def test_a_gap_is_an_unread_entry_trimmed() -> None:
    # 10 entries added, the group read 4 (cursor at the 4th), the stream holds the last 6: nothing lost.
    read_all_left = StreamPosition((100, 4), 6, 10, (100, 3), 4)
    assert not read_all_left.gap
    # It holds the last 3 only: 3 unread entries were trimmed.
    trimmed = StreamPosition((100, 7), 3, 10, (100, 3), 4)
    assert trimmed.gap
    # Read everything, then the stream trimmed what was read: the first entry is after the cursor, no gap.
    caught_up = StreamPosition((200, 0), 2, 12, (100, 9), 10)
    assert not caught_up.gap
    # Redis < 7 has no counters: nothing can be told.
    assert not StreamPosition((100, 7), 3, None, (100, 3), None).gap
    # The group's cursor before the first entry with an unknown read count: assume the worst.
    assert StreamPosition((100, 7), 3, 10, (100, 3), None).gap
    assert not StreamPosition(None, 0, 10, (100, 3), 4).gap  # an empty stream: nothing to lose


def test_a_new_group_starts_just_before_the_first_entry_with_redis_count() -> None:
    assert StreamPosition((100, 7), 3, 10, None, None).group_start() == ("100-6", 7)
    assert StreamPosition(None, 0, 0, None, None).group_start() == ("0-0", 0)


def test_a_catch_up_widens_to_cover_a_second_gap() -> None:
    running = CatchUp(start=100, end=200, cursor_xid=150, cursor_event="e", delivered=30)
    later = running.widened(120, 260)
    assert (later.start, later.end, later.cursor_xid, later.cursor_event) == (100, 260, 150, "e")
    earlier = running.widened(50, 180)
    assert (earlier.start, earlier.end, earlier.cursor_xid, earlier.cursor_event) == (50, 200, 50, None)
    assert CatchUp.loads(running.dumps()) == running


def test_settings_select_learning_events_and_never_system_events() -> None:
    assert "material_view" in settings().selection()
    assert settings(lrs_event_types="material_view, xp_awarded").selection().event_types == {
        "material_view",
        "xp_awarded",
    }
    with pytest.raises(ValueError, match="system event"):
        settings(lrs_event_types="material_view,api_request")
    with pytest.raises(ValueError, match="unknown"):
        settings(lrs_event_types="material_veiw")


def test_settings_authentication_is_basic_or_oauth_and_secrets_stay_hidden() -> None:
    with pytest.raises(ValueError, match="go together"):
        settings(lrs_username="u")
    with pytest.raises(ValueError, match="go together"):
        settings(lrs_oauth_token_url="https://auth.example/token")
    with pytest.raises(ValueError, match="not both"):
        settings(
            lrs_username="u",
            lrs_password="p",
            lrs_oauth_token_url="https://auth.example/token",
            lrs_oauth_client_id="c",
            lrs_oauth_client_secret="s",
        )
    configured = settings(lrs_username="u", lrs_password="pass-secret")
    assert "pass-secret" not in repr(configured) and "pw-secret" not in repr(configured)
    assert configured.statements_url == "https://user:pw-secret@lrs.example/xAPI/statements"


def test_missing_iri_base_or_url_is_named() -> None:
    with pytest.raises(ConfigurationError, match="LRS_IRI_BASE"):
        settings(lrs_iri_base=None).xapi_config()
    with pytest.raises(ConfigurationError, match="LRS_URL"):
        settings(lrs_url=None).statements_url  # noqa: B018
    with pytest.raises(ConfigurationError, match="iri_base"):
        settings(lrs_iri_base="ftp://x").xapi_config()


def test_the_command_names_a_missing_setting_and_exits_2() -> None:
    env = {"PATH": "/usr/bin:/bin", "STUDYIN_ANALYTICS_REDIS_URL": "redis://127.0.0.1:1/0"}
    done = subprocess.run(
        [sys.executable, "-m", "studyin_analytics.aggregator.cli", "lrs-forward", "--status"],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "STUDYIN_ANALYTICS_LRS_IRI_BASE is not set" in done.stderr
    bad = {**env, "STUDYIN_ANALYTICS_LRS_EVENT_TYPES": "system_metric"}
    done = subprocess.run(
        [sys.executable, "-m", "studyin_analytics.aggregator.cli", "lrs-forward"],
        env=bad,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "STUDYIN_ANALYTICS_LRS_EVENT_TYPES" not in done.stdout
    assert "system event" in done.stderr
