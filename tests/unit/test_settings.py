from __future__ import annotations

import re

import pytest

from worker.errors import ConfigError
from worker.settings import AlertRule, Secret, Settings


def test_environment_and_overrides() -> None:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "a:1",
        "SCANSTREAM_MAX_FRAMES": "7",
        "SCANSTREAM_REQUIRE_GPU": "true",
        "SCANSTREAM_ALERT_RULES": "lesion>=0.5@ct:critical",
    }
    s = Settings.from_env(env, group_id="g")
    assert (s.bootstrap_servers, s.max_frames, s.require_gpu, s.group_id) == ("a:1", 7, True, "g")
    assert s.alert_rules == (AlertRule("lesion", 0.5, "CT", "critical"),)
    # The project-specific variable wins over the conventional one.
    both = Settings.from_env(
        {"KAFKA_BOOTSTRAP_SERVERS": "a:1", "SCANSTREAM_BOOTSTRAP_SERVERS": "b:2"}
    )
    assert both.bootstrap_servers == "b:2"


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"SCANSTREAM_MAX_FRAMES": "x"}, "SCANSTREAM_MAX_FRAMES"),
        ({"SCANSTREAM_MAX_FRAMES": "0"}, "at least 1"),
        ({"SCANSTREAM_DELIVERY": "twice"}, "exactly-once"),
        ({"SCANSTREAM_REQUIRE_GPU": "maybe"}, "boolean"),
        ({"SCANSTREAM_ALERT_RULES": "lesion=0.5"}, "label>=threshold"),
        ({"SCANSTREAM_ALERT_RULES": "lesion>=2"}, "[0, 1]"),
        ({"SCANSTREAM_DLQ_TOPIC": "scans.events"}, "must differ"),
        ({"SCANSTREAM_METRICS_PORT": "70000"}, "TCP port"),
        ({"SCANSTREAM_DELIVRY": "exactly-once"}, "did you mean SCANSTREAM_DELIVERY?"),
        ({"SCANSTREAM_COLOUR": "blue"}, "unknown variable SCANSTREAM_COLOUR"),
        ({"SCANSTREAM_EVENT_TIMEOUT_S": "nan"}, "finite"),
        ({"SCANSTREAM_STALL_TIMEOUT_S": "0"}, "> 0"),
    ],
)
def test_misconfiguration_names_what_to_fix(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        Settings.from_env(env)
    assert fragment in str(info.value)


def test_secret_never_printed() -> None:
    s = Settings.from_env({"SCANSTREAM_PSEUDONYM_KEY": "hunter2"})
    assert s.pseudonym_key == Secret("hunter2")
    assert "hunter2" not in repr(s)
    assert "hunter2" not in str(s.describe())
    assert s.describe()["pseudonym_key"] == "***"


def test_the_sr_topic_must_differ_from_the_others() -> None:
    with pytest.raises(ConfigError, match="series and SR topics must differ"):
        Settings(sr_topic="scans.events")
    assert Settings(sr_topic="scans.sr").namespaced("t1").sr_topic == "t1.sr"
    assert Settings().namespaced("t1").sr_topic is None  # off stays off


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SCANSTREAM_EXPORT_TO": "pacs:104"}, "SCANSTREAM_EXPORT_TO='pacs:104'"),
        ({"SCANSTREAM_EXPORT_TO": "https://u:secret@pacs/dicom-web"}, "SCANSTREAM_EXPORT_AUTH"),
        ({"SCANSTREAM_EXPORT_AUTH": "token abc"}, "SCANSTREAM_EXPORT_AUTH"),
        ({"SCANSTREAM_EXPORT_MAX_ATTEMPTS": "0"}, "SCANSTREAM_EXPORT_MAX_ATTEMPTS"),
    ],
)
def test_export_settings_fail_naming_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        Settings.from_env(env)
    assert "secret" not in str(info.value) and "abc" not in str(info.value)
