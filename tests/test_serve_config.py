"""``pacscore serve`` settings: every value of ``--config FILE`` (TOML) and of the
command line is checked against its setting's type and range before anything starts."""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, get_type_hints

import pytest
from pydicom.dataset import Dataset

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


# Issue 16.7: the worklist and HL7 settings from the TOML file.
WORKFLOW_TOML = ('hl7_port = 2575\nhl7_max_message = 4096\nhl7_answers_days = 7.5\n'
                 'hl7_report_to = "ris.example.org:2576"\nhl7_report_retry = 0.5\n'
                 'worklist_max_answers = 1\n')


def test_worklist_and_hl7_settings_are_taken_from_the_file(tmp_path: Path) -> None:
    config = _load(tmp_path, WORKFLOW_TOML)
    assert (config.hl7_port, config.hl7_max_message, config.hl7_answers_days,
            config.hl7_report_to, config.hl7_report_retry, config.worklist_max_answers) == \
        (2575, 4096, 7.5, "ris.example.org:2576", 0.5, 1)
    assert isinstance(config.hl7_answers_days, float)
    defaults = _load(tmp_path, "")
    assert (defaults.hl7_port, defaults.hl7_report_to, defaults.worklist_max_answers,
            defaults.hl7_answers_days) == (None, None, 5000, 30.0)


@pytest.mark.parametrize(("line", "said"), [
    ("hl7_port = 0", ["hl7_port", "1 to 65535", "0"]),
    ('hl7_port = "2575"', ["hl7_port", "an integer", "'2575'"]),
    ("hl7_max_message = 0", ["hl7_max_message", "above 0", "0"]),
    ("hl7_answers_days = 0", ["hl7_answers_days", "above 0", "0"]),
    ("hl7_answers_days = inf", ["hl7_answers_days", "finite", "inf"]),
    ("hl7_report_retry = -1.0", ["hl7_report_retry", "above 0", "-1.0"]),
    ("hl7_report_to = 2576", ["hl7_report_to", "a string", "2576"]),
    ("worklist_max_answers = -1", ["worklist_max_answers", "0 (unlimited)", "-1"]),
    ("worklist_max_answers = 1.5", ["worklist_max_answers", "an integer", "1.5"]),
])
def test_wrong_worklist_and_hl7_values_are_refused(tmp_path: Path, line: str,
                                                   said: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        _load(tmp_path, line + "\n")
    for words in said:
        assert words in str(info.value), (words, str(info.value))


def test_a_report_destination_without_a_port_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"ris\.example\.org"):
        _load(tmp_path, 'hl7_report_to = "ris.example.org"\n')


def test_serve_takes_the_worklist_and_hl7_settings_from_the_file(tmp_path: Path) -> None:
    """The file's values reach the doors of a running server: the MLLP door on the
    file's port with its message limit, the worklist C-FIND with its answer limit,
    reports to the file's destination."""
    from pynetdicom import AE
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        ModalityWorklistInformationFind,
    )

    from pacscore.testing import free_port, serve_process

    from .test_hl7 import frame, msa, orm, prepared, read_ack

    root = prepared(tmp_path / "archive")
    hl7_port, ris_port = free_port(), free_port()
    config = tmp_path / "pacscore.toml"
    config.write_text(WORKFLOW_TOML.replace("2575", str(hl7_port))
                      .replace("ris.example.org:2576", f"127.0.0.1:{ris_port}"))
    output: list[str] = []
    with serve_process(root, "--config", str(config), doors=("dimse", "http", "grpc"),
                       output=output) as (_, ports):
        assert f"HL7 (MLLP) on 127.0.0.1:{hl7_port}" in output[-1]
        assert f"reports (ORU^R01) to 127.0.0.1:{ris_port}" in output[-1]
        with socket.create_connection(("127.0.0.1", hl7_port), timeout=30) as s:
            for ctrl, acc in (("T-1", "T1"), ("T-2", "T2")):
                s.sendall(frame(orm(ctrl, acc=acc)))
                assert msa(read_ack(s)) == ("AA", ctrl)
            s.sendall(frame(orm("T-3", acc="T3", extra="NTE|1||" + "x" * 5000)))
            ack = read_ack(s)  # over hl7_max_message = 4096, read whole in one go
            assert msa(ack) == ("AR", "T-3") and b"longer than 4096 bytes" in ack
            assert s.recv(10) == b""  # and the connection closed, as for a longer one
        query = Dataset()
        query.AccessionNumber = "T*"
        query.PatientID = ""
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(ModalityWorklistInformationFind)
        assoc = ae.associate("127.0.0.1", ports["dimse"], ae_title="PACSCORE")
        assert assoc.is_established
        try:
            answers = [(int(status.Status), str(status.get("ErrorComment", ""))) for status, _
                       in assoc.send_c_find(query, ModalityWorklistInformationFind)]
            query.AccessionNumber = "T1"
            one = [int(status.Status) for status, _
                   in assoc.send_c_find(query, ModalityWorklistInformationFind)]
        finally:
            assoc.release()
    # two match, one is the most worklist_max_answers lets through: refused, narrowed
    (refused,) = answers
    assert refused[0] == 0xA700 and "more than 1 worklist items match" in refused[1]
    assert one == [0xFF00, 0x0000]
