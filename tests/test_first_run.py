"""A new user's first run, through the real command (subprocesses): the first-start
hint works as printed and never shows the secret, an admin token exists after the first
serve whatever was created before, `find | head` ends quietly, `--help` names every
service, read commands refuse a mistyped archive and work read-only, `export` takes
study and series UIDs, and an archive is private whatever the umask (issues 14.3,
14.4, 19.12, 19.14)."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from pacscore.testing import serving


def pacscore(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacscore.cli", *args], capture_output=True,
                          text=True, timeout=300, check=False, **kwargs)  # type: ignore[call-overload]


def venv_env() -> dict[str, str]:
    """The environment with this interpreter's bin folder first (`pacscore` as printed)."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
                                  f"{os.environ.get('PATH', '')}"}


@pytest.fixture()
def small_archive(tmp_path: Path, corpus: Path) -> Path:
    """3 CT instances of one series (one study), and one more of another study."""
    root = tmp_path / "archive"
    src = corpus / "ct_series/dcmqi_ge_ct_3slice"
    done = pacscore("import", str(src), str(corpus / "ct_series/single/Philips_CT.dcm"),
                    "--archive", str(root), "--workers", "0")
    assert done.returncode == 0, done.stderr
    return root


# -- 14.3 ---------------------------------------------------------------------------
def test_help_names_every_service() -> None:
    text = pacscore("--help").stdout
    assert "DIMSE, DICOMweb (HTTP) and gRPC services" in text, text
    assert "bearer tokens for DICOMweb and gRPC" in text, text
    assert "the DIMSE service on" not in text


def test_first_start_hint_works_as_printed_and_hides_the_secret(tmp_path: Path) -> None:
    archive = tmp_path / "my archive"  # a space: the printed paths are quoted
    seen: list[str] = []
    with serving(archive, output=seen) as ports:
        text = "".join(seen)
        secret = (archive / "security" / "admin-token").read_text().strip()
        assert secret.startswith("pcs_") and secret not in text, text
        assert str(archive / "security" / "admin-token") in text
        curl = next(line for line in text.splitlines() if "curl" in line)
        curl = curl.split("use it as: ", 1)[1].replace(f":{ports['http']}/",
                                                       f":{ports['http']}/")
        if shutil.which("curl"):
            answer = subprocess.run(["bash", "-c", curl + " -s -o /dev/null -w '%{http_code}'"],
                                    capture_output=True, text=True, check=False)
            assert answer.stdout == "200", (curl, answer)
    create = next(line for line in text.splitlines() if "token create" in line)
    command = create.split("with: ", 1)[1]
    made = subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                          env=venv_env(), check=False)
    assert made.returncode == 0, (command, made.stderr)
    assert made.stdout.startswith("pcs_")


def test_first_serve_writes_an_admin_token_after_token_create(tmp_path: Path) -> None:
    archive = tmp_path / "a"
    read = pacscore("token", "create", "--scope", "read", "--archive", str(archive))
    assert read.returncode == 0, read.stderr
    seen: list[str] = []
    with serving(archive, output=seen) as ports:
        admin = (archive / "security" / "admin-token").read_text().strip()
        url = f"http://127.0.0.1:{ports['http']}/dicom-web/studies"
        got = requests.get(url, headers={"Authorization": f"Bearer {admin}"}, timeout=10)
        assert got.status_code in (200, 204), got.text
    assert "first start" in "".join(seen)
    listed = json.loads(pacscore("token", "list", "--archive", str(archive)).stdout)
    assert sorted(v["scope"] for v in listed.values()) == ["admin", "read"]
    again: list[str] = []
    with serving(archive, output=again):  # an admin token exists: nothing new
        pass
    assert "first start" not in "".join(again)
    assert len(json.loads(pacscore("token", "list", "--archive", str(archive)).stdout)) == 2


def test_find_into_a_closed_pipe_ends_like_coreutils(small_archive: Path) -> None:
    """The reader is gone before anything is written: killed by SIGPIPE (the shell's
    141), nothing on stderr (was `pacscore: [Errno 32] Broken pipe`, exit 2)."""
    proc = subprocess.Popen([sys.executable, "-m", "pacscore.cli", "find", "--archive",
                             str(small_archive), "--level", "instance"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=60) == -signal.SIGPIPE, err
    assert err == ""
    shell = subprocess.run(
        ["bash", "-c", f"{shlex.quote(sys.executable)} -m pacscore.cli find --archive "
         f"{shlex.quote(str(small_archive))} --level instance --json | head -c 1"],
        capture_output=True, text=True, check=False)
    assert shell.returncode == 0 and shell.stderr == "", shell


# -- 19.12 --------------------------------------------------------------------------
@pytest.mark.parametrize("command", [["verify"], ["stats"], ["find", "--level", "study"],
                                     ["export", "1.2.3", "--out", "OUT"]])
def test_read_commands_refuse_a_path_that_is_not_an_archive(tmp_path: Path,
                                                            command: list[str]) -> None:
    args = [a.replace("OUT", str(tmp_path / "out")) for a in command]
    missing = tmp_path / "archiv"  # a typo
    done = pacscore(*args, "--archive", str(missing))
    assert done.returncode == 2, done
    assert str(missing) in done.stderr and "pacscore import" in done.stderr
    assert not missing.exists() and not (tmp_path / "out").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    done = pacscore(*args, "--archive", str(empty))
    assert done.returncode == 2 and "not a pacscore archive" in done.stderr, done
    assert list(empty.iterdir()) == []


def _read_everything(archive: Path, out: Path, prefix: list[str]) -> None:
    study = json.loads(subprocess.run(
        [*prefix, sys.executable, "-m", "pacscore.cli", "find", "--archive", str(archive),
         "--level", "study", "--json"], capture_output=True, text=True, check=True).stdout
                       )["matches"][0]["StudyInstanceUID"]
    for args in (["verify"], ["stats", "--json"], ["export", study, "--out", str(out)]):
        done = subprocess.run([*prefix, sys.executable, "-m", "pacscore.cli", *args,
                               "--archive", str(archive)], capture_output=True, text=True,
                              check=False)
        assert done.returncode == 0, (args, done.stderr)
    assert len(list(out.glob("*.dcm"))) >= 1


NO_DAC = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps=-all",
          "--"]
"""Root without the capabilities that override file modes: what `chmod -R a-w` means to
a non-root user (`runuser -u nobody` cannot run this venv's interpreter, under /root)."""


def _no_dac_works() -> bool:
    return shutil.which("setpriv") is not None and subprocess.run(
        [*NO_DAC, "true"], capture_output=True, check=False).returncode == 0


def test_read_commands_work_on_an_archive_without_write_permission(
        tmp_path: Path, small_archive: Path) -> None:
    if not _no_dac_works():
        pytest.skip("setpriv cannot drop capabilities here")
    copy = tmp_path / "ro"
    shutil.copytree(small_archive, copy)
    subprocess.run(["chmod", "-R", "a-w", str(copy)], check=True)
    (tmp_path / "out").mkdir()
    _read_everything(copy, tmp_path / "out", NO_DAC)
    # While a writer holds the archive, a reader that cannot register in LMDB's lock
    # file refuses (it could read pages the writer reuses) instead of reading garbage.
    fd = os.open(copy / "archive.lock", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        busy = subprocess.run([*NO_DAC, sys.executable, "-m", "pacscore.cli", "stats",
                               "--archive", str(copy)], capture_output=True, text=True,
                              check=False)
        assert busy.returncode == 2 and "being written" in busy.stderr, busy
    finally:
        os.close(fd)
    subprocess.run(["chmod", "-R", "u+w", str(copy)], check=True)


def test_read_commands_work_on_a_read_only_mount(tmp_path: Path, small_archive: Path) -> None:
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-m", "true"], capture_output=True, check=False).returncode != 0:
        pytest.skip("no mount namespaces here")
    mount = tmp_path / "mnt"
    mount.mkdir()
    (tmp_path / "out").mkdir()
    script = (f"mount --bind {small_archive} {mount} && mount -o remount,bind,ro {mount} "
              f"&& touch {mount}/x 2>/dev/null && exit 9; exec \"$@\"")
    prefix = ["unshare", "-m", "sh", "-c", script, "sh"]
    _read_everything(mount, tmp_path / "out", prefix)


# -- 14.4 export ----------------------------------------------------------------------
def test_export_takes_study_and_series_uids(tmp_path: Path, small_archive: Path) -> None:
    matches = json.loads(pacscore("find", "--archive", str(small_archive), "--level",
                                  "instance", "--json").stdout)["matches"]
    by_study: dict[str, set[str]] = {}
    for m in matches:
        by_study.setdefault(m["StudyInstanceUID"], set()).add(m["SOPInstanceUID"])
    ct3 = next(s for s, sops in by_study.items() if len(sops) == 3)
    series = next(m["SeriesInstanceUID"] for m in matches if m["StudyInstanceUID"] == ct3)
    one = next(m["SOPInstanceUID"] for m in matches if m["StudyInstanceUID"] != ct3)
    for uids, expected in (([ct3], by_study[ct3]), ([series, one], by_study[ct3] | {one}),
                           ([one, ct3, series], by_study[ct3] | {one})):
        out = tmp_path / f"out{len(uids)}"
        done = pacscore("export", *uids, "--archive", str(small_archive), "--out", str(out))
        assert done.returncode == 0, done.stderr
        assert {p.name for p in out.iterdir()} == {f"{s}.dcm" for s in expected}
        assert done.stdout.count("\n") == len(expected)  # one line per file, no repeats
    done = pacscore("export", ct3, "1.2.999.1", "--archive", str(small_archive), "--out",
                    str(tmp_path / "bad"))
    assert done.returncode == 2 and "1.2.999.1" in done.stderr, done
    assert not (tmp_path / "bad").exists()


# -- 19.14 ----------------------------------------------------------------------------
def test_a_fresh_archive_is_private_whatever_the_umask(tmp_path: Path, corpus: Path) -> None:
    """umask 022, then token create, import, serve with a STOW-RS and a C-STORE:
    nothing under the archive is readable by group or others."""
    archive = tmp_path / "a"
    old = os.umask(0o022)
    try:
        assert pacscore("token", "create", "--scope", "read", "--archive",
                        str(archive)).returncode == 0
        assert pacscore("ae", "add", "MODALITY", "--host", "127.0.0.1", "--archive",
                        str(archive)).returncode == 0
        done = pacscore("import", str(corpus / "ct_series/dcmqi_ge_ct_3slice"), "--archive",
                        str(archive), "--workers", "1")
        assert done.returncode == 0, done.stderr
        with serving(archive) as ports:
            token = (archive / "security" / "admin-token").read_text().strip()
            part = (corpus / "ct_series/single/Philips_CT.dcm").read_bytes()
            body = (b"--b\r\nContent-Type: application/dicom\r\n\r\n" + part
                    + b"\r\n--b--\r\n")
            got = requests.post(
                f"http://127.0.0.1:{ports['http']}/dicom-web/studies", data=body,
                headers={"Authorization": f"Bearer {token}", "Content-Type":
                         'multipart/related; type="application/dicom"; boundary=b'},
                timeout=60)
            assert got.status_code == 200, got.text
            if shutil.which("storescu", path="/usr/bin"):
                sent = subprocess.run(
                    ["/usr/bin/storescu", "-aet", "MODALITY", "-aec", "PACSCORE",
                     "127.0.0.1", str(ports["dimse"]),
                     str(corpus / "mr_series/single/MR_small.dcm")
                     if (corpus / "mr_series/single/MR_small.dcm").exists()
                     else str(corpus / "ct_series/tcia_lung_pet_ct_dx_chest_30sl"
                              / sorted(os.listdir(corpus / "ct_series/"
                                                  "tcia_lung_pet_ct_dx_chest_30sl"))[0])],
                    capture_output=True, text=True, check=False)
                assert sent.returncode == 0, sent.stderr
    finally:
        os.umask(old)
    loose = []
    for path in [archive, *archive.rglob("*")]:
        mode = path.lstat().st_mode
        if stat.S_IMODE(mode) & 0o077:
            loose.append(f"{oct(stat.S_IMODE(mode))} {path.relative_to(tmp_path)}")
    assert (archive / "frames" / "arrays").is_dir() and (archive / "audit").is_dir()
    assert not loose, "\n".join(loose)
    assert re.fullmatch(r"pcs_\w+_\S+", (archive / "security" / "admin-token").read_text()
                        .strip())
