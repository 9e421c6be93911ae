"""TLS on all three services (mutual for DIMSE and gRPC), and the TOML config file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import requests

from pacscore.services.grpc.generated import load
from pacscore.testing import cli, serving

pb, svc = load()
DCMTK = Path("/usr/bin")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.crt", "-days", "2", "-subj", "/CN=pacscore test CA", cwd=d)
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                 f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        (d / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile",
                 f"{name}.ext", cwd=d)
    return d


def test_tls_everywhere_from_a_config_file(tmp_path: Path, pki: Path, corpus: Path) -> None:
    archive = tmp_path / "archive"
    config = tmp_path / "pacscore.toml"
    config.write_text(f'ae_title = "SECUREPACS"\ntls_cert = "{pki / "server.crt"}"\n'
                      f'tls_key = "{pki / "server.key"}"\ntls_ca = "{pki / "ca.crt"}"\n')
    cli("ae", "add", "MODALITY", "--host", "127.0.0.1", "--archive", str(archive))
    with serving(archive, "--config", str(config)) as ports:
        token = (archive / "security" / "admin-token").read_text().strip()
        r = requests.get(f"https://127.0.0.1:{ports['http']}/dicom-web/studies",
                         headers={"Authorization": f"Bearer {token}"},
                         verify=str(pki / "ca.crt"), timeout=30)
        assert r.status_code == 200 and r.json() == []
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"http://127.0.0.1:{ports['http']}/dicom-web/studies", timeout=10)

        creds = grpc.ssl_channel_credentials(
            root_certificates=(pki / "ca.crt").read_bytes(),
            private_key=(pki / "client.key").read_bytes(),
            certificate_chain=(pki / "client.crt").read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{ports['grpc']}", creds) as channel:
            stats = svc.ArchiveStub(channel).Stats(
                pb.StatsRequest(), metadata=(("authorization", f"Bearer {token}"),), timeout=30)
            assert stats.instances == 0
        anonymous = grpc.ssl_channel_credentials(root_certificates=(pki / "ca.crt").read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{ports['grpc']}", anonymous) as channel, \
                pytest.raises(grpc.RpcError):
            svc.ArchiveStub(channel).Stats(pb.StatsRequest(), timeout=10,
                                           metadata=(("authorization", f"Bearer {token}"),))

        if (DCMTK / "echoscu").exists():
            env = {**os.environ, "TCP_NODELAY": "1"}
            secure = subprocess.run(
                [str(DCMTK / "echoscu"), "-aet", "MODALITY", "-aec", "SECUREPACS", "+tls",
                 str(pki / "client.key"), str(pki / "client.crt"), "+cf", str(pki / "ca.crt"),
                 "127.0.0.1", str(ports["dimse"])], capture_output=True, env=env, timeout=60,
                check=False)
            assert secure.returncode == 0, secure.stderr
            files = sorted((corpus / "ct_series/tcia_lung_pet_ct_dx_chest_30sl").iterdir())[:3]
            stored = subprocess.run(
                [str(DCMTK / "storescu"), "-aet", "MODALITY", "-aec", "SECUREPACS", "+tls",
                 str(pki / "client.key"), str(pki / "client.crt"), "+cf", str(pki / "ca.crt"),
                 "127.0.0.1", str(ports["dimse"]), *map(str, files)], capture_output=True,
                env=env, timeout=60, check=False)
            assert stored.returncode == 0, stored.stderr
            assert json.loads(cli("stats", "--archive", str(archive), "--json"))[
                "instances"] == 3
            plain = subprocess.run(
                [str(DCMTK / "echoscu"), "-aet", "MODALITY", "-aec", "SECUREPACS",
                 "127.0.0.1", str(ports["dimse"])], capture_output=True, env=env, timeout=60,
                check=False)
            assert plain.returncode != 0


def test_config_file_rejects_unknown_settings(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('http_prot = 8042\n')
    proc = subprocess.run([sys.executable, "-m", "pacscore.cli", "serve", "--archive",
                           str(tmp_path / "a"), "--config", str(config)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "http_prot" in proc.stderr


def test_a_silent_connection_holds_up_no_other_tls_association(tmp_path: Path,
                                                               pki: Path) -> None:
    """A peer that connects to the DIMSE TLS port and sends nothing (no handshake) does
    not keep others out: their associations are accepted meanwhile."""
    if not (DCMTK / "echoscu").exists():
        pytest.skip("DCMTK not installed")
    import socket

    archive = tmp_path / "archive"
    cli("ae", "add", "MODALITY", "--host", "127.0.0.1", "--archive", str(archive))
    tls = ("--tls-cert", str(pki / "server.crt"), "--tls-key", str(pki / "server.key"),
           "--tls-ca", str(pki / "ca.crt"))
    with serving(archive, *tls) as ports, \
            socket.create_connection(("127.0.0.1", ports["dimse"])) as silent:
        echo = subprocess.run(
            [str(DCMTK / "echoscu"), "-aet", "MODALITY", "-aec", "PACSCORE", "+tls",
             str(pki / "client.key"), str(pki / "client.crt"), "+cf", str(pki / "ca.crt"),
             "-to", "20", "127.0.0.1", str(ports["dimse"])], capture_output=True, timeout=60,
            env={**os.environ, "TCP_NODELAY": "1"}, check=False)
        assert echo.returncode == 0, echo.stderr
        assert silent.fileno() >= 0
