"""Publisher configuration: flags over environment over file over defaults, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluice_runtime.common.config import ConfigError, load_section
from sluice_runtime.publisher.engine import auth_headers
from sluice_runtime.publisher.settings import PUBLISHER_OPTIONS, SECRET_ENV_OPTIONS, PublisherSettings

OPTIONS = [*PUBLISHER_OPTIONS, *SECRET_ENV_OPTIONS]


def load(file_data: dict, flags: dict | None = None, environ: dict | None = None) -> PublisherSettings:
    return load_section(PublisherSettings, "publisher", OPTIONS, file_data, flags or {}, environ or {})


def test_flags_beat_environment_beat_file() -> None:
    file_data = {"publisher": {"elasticsearch": {"url": "http://file:9200", "index": "from-file"}}}
    assert load(file_data).elasticsearch.url == "http://file:9200"
    environ = {"SLUICE_ES_URL": "http://env:9200"}
    assert load(file_data, environ=environ).elasticsearch.url == "http://env:9200"
    chosen = load(file_data, flags={"es_url": "http://flag:9200"}, environ=environ)
    assert chosen.elasticsearch.url == "http://flag:9200"
    assert chosen.elasticsearch.index == "from-file"


def test_defaults_keep_the_rtbeat_index_and_file_output() -> None:
    settings = load({})
    assert settings.elasticsearch.url is None
    assert settings.elasticsearch.index == "wx-rtbeat-%{+yyyy.MM}"
    assert settings.template_patterns() == ["wx-rtbeat-*"]
    assert settings.elasticsearch.tls_verify is True


@pytest.mark.parametrize(
    ("file_data", "flags", "message"),
    [
        ({"publisher": {"elasticsearch": {"url": "elastic:9200"}}}, {}, "publisher.elasticsearch.url"),
        ({}, {"index": "Wx-%{+yyyy}"}, "publisher.elasticsearch.index.*lowercase"),
        ({"publisher": {"elasticsearch": {"maxBulkBytes": 0}}}, {}, "publisher.elasticsearch.maxBulkBytes"),
        ({"publisher": {"elasticsearch": {"gzpi": True}}}, {}, "publisher.elasticsearch.gzpi: Extra inputs"),
        ({}, {"es_username": "elastic"}, "username and password"),
        ({}, {"fields": "f.yml"}, "name is required when fieldsFile is set"),
        ({}, {"listen": "8081"}, "publisher.listen"),
        ({"publisher": {"elasticsearch": {"requestTimeout": "soon"}}}, {}, "requestTimeout.*not a duration"),
    ],
)
def test_bad_values_are_refused_naming_the_field(file_data: dict, flags: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(file_data, flags)


def test_credentials_come_from_files_or_environment(tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    settings = load({}, flags={"es_username": "elastic", "es_password_file": str(password)})
    assert auth_headers(settings.elasticsearch) == {"Authorization": "Basic ZWxhc3RpYzpzM2NyZXQ="}
    from_env = load({}, environ={"SLUICE_ES_API_KEY": "id:key"})
    assert auth_headers(from_env.elasticsearch) == {"Authorization": "ApiKey aWQ6a2V5"}
    with pytest.raises(ConfigError, match="not both"):
        load({}, flags={"es_api_key_file": str(password)}, environ={"SLUICE_ES_API_KEY": "k"})
    missing = load({}, flags={"es_api_key_file": str(tmp_path / "absent")})
    with pytest.raises(ConfigError, match="apiKeyFile: cannot read"):
        auth_headers(missing.elasticsearch)
