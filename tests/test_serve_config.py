"""``pacscore serve`` settings: every value of ``--config FILE`` (TOML) and of the
command line is checked against its setting's type and range before anything starts."""

from __future__ import annotations

import http.client
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, get_type_hints

import pytest

from pacscore.services.serve import _LIMITS, _SETTING_TYPES, ServeConfig
from pacscore.testing import serving


def _load(tmp_path: Path, text: str, **overrides: Any) -> ServeConfig:
    path = tmp_path / "pacscore.toml"
    path.write_text(text)
    return ServeConfig.load(str(path), overrides)


# TOML line -> what the message must say: the key, the expected kind, the value found
REFUSED = [
    ('max_pdu = "big"', ["max_pdu", "an integer", "'big'", "a string"]),
    ('max_body = "2000000"', ["max_body", "an integer", "'2000000'", "a string"]),
    ("max_body = [1]", ["max_body", "an integer", "[1]", "an array"]),
    ('idle_timeout = "soon"', ["idle_timeout", "a number", "'soon'"]),
    ('max_associations = "many"', ["max_associations", "an integer", "'many'"]),
    ('dimse_port = "abc"', ["dimse_port", "an integer", "'abc'"]),
    ("http_port = 1.5", ["http_port", "an integer", "1.5", "a float"]),
    ("max_pdu = true", ["max_pdu", "an integer", "True", "a boolean"]),
    ("host = 1", ["host", "a string", "1"]),
    ("cors = [1]", ["cors", "a list of strings", "[1]"]),
    ("tls_cert = false", ["tls_cert", "a string", "False"]),
    ("dimse_port = 0", ["dimse_port", "1 to 65535", "0"]),
    ("grpc_port = 70000", ["grpc_port", "1 to 65535", "70000"]),
    ("max_body = 0", ["max_body", "above 0", "0"]),
    ("max_pdu = -1", ["max_pdu", "0 (unlimited)", "-1"]),
    ("max_associations = 0", ["max_associations", "above 0", "0"]),
    ("idle_timeout = 0", ["idle_timeout", "above 0", "0"]),
    ("idle_timeout = -5.0", ["idle_timeout", "above 0", "-5.0"]),
    ("idle_timeout = inf", ["idle_timeout", "finite", "inf"]),
    ("idle_timeout = nan", ["idle_timeout", "finite", "nan"]),
]


@pytest.mark.parametrize(("line", "said"), REFUSED)
def test_wrong_values_are_refused_with_key_type_and_value(tmp_path: Path, line: str,
                                                          said: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        _load(tmp_path, line + "\n")
    text = str(info.value)
    assert str(tmp_path / "pacscore.toml") in text
    for words in said:
        assert words in text, (words, text)


def test_right_values_are_taken(tmp_path: Path) -> None:
    config = _load(tmp_path, 'max_pdu = 0\nidle_timeout = 5\nmax_body = 2000000\n'
                             'cors = ["https://a.example", "https://b.example"]\n'
                             'dimse_port = 104\nspool = "/tmp/s"\n')
    assert config.max_pdu == 0 and config.max_body == 2000000 and config.dimse_port == 104
    assert config.idle_timeout == 5.0 and isinstance(config.idle_timeout, float)
    assert config.cors == ("https://a.example", "https://b.example")
    assert config.spool == "/tmp/s"


def test_a_single_origin_is_a_one_element_list(tmp_path: Path) -> None:
    """Not a tuple of its characters (which allowed ``Origin: h``)."""
    assert _load(tmp_path, 'cors = "https://viewer.example"\n').cors == (
        "https://viewer.example",)


def test_command_line_values_are_checked_too(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--dimse-port must be a port number"):
        ServeConfig.load(None, {"dimse_port": 0})
    assert ServeConfig.load(None, {"cors": ["https://a.example"]}).cors == (
        "https://a.example",)


def test_every_setting_has_a_type_check_and_limits_name_settings() -> None:
    hints = get_type_hints(ServeConfig)
    assert all(hints[f.name] in _SETTING_TYPES for f in fields(ServeConfig))
    assert set(_LIMITS) <= set(hints)


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"pacscore\.toml: not valid TOML"):
        _load(tmp_path, "max_pdu = = 3\n")


@pytest.mark.parametrize("line", ['max_pdu = "big"', 'max_body = "2000000"',
                                  'cors = [1]'])
def test_serve_exits_2_before_starting(tmp_path: Path, line: str) -> None:
    config = tmp_path / "pacscore.toml"
    config.write_text(line + "\n")
    archive = tmp_path / "archive"
    proc = subprocess.run([sys.executable, "-m", "pacscore.cli", "serve", "--archive",
                           str(archive), "--config", str(config)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr
    assert line.split(maxsplit=1)[0] in proc.stderr and "Traceback" not in proc.stderr
    assert "listening" not in proc.stdout and not archive.exists()


def test_a_single_origin_in_the_file_is_allowed_and_no_other(tmp_path: Path) -> None:
    config = tmp_path / "pacscore.toml"
    config.write_text('cors = "https://viewer.example"\n')
    with serving(tmp_path / "archive", "--config", str(config)) as ports:
        answers = {}
        for origin in ("https://viewer.example", "h"):
            conn = http.client.HTTPConnection("127.0.0.1", ports["http"], timeout=30)
            conn.request("OPTIONS", "/dicom-web/studies", headers={
                "Origin": origin, "Access-Control-Request-Method": "GET"})
            response = conn.getresponse()
            answers[origin] = (response.status,
                               response.getheader("access-control-allow-origin"))
            conn.close()
    assert answers == {"https://viewer.example": (200, "https://viewer.example"),
                       "h": (400, None)}
