"""The command line: refusals are one line and exit code 2 (a traceback only with --debug), names and
folders are checked before any build, and keys are found per server without touching the environment."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from deepfake_serving.cli import main
from deepfake_serving.serving.client import auth

CLI = [sys.executable, "-m", "deepfake_serving.cli"]


def cli(*args, timeout=120, **kwargs):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.mark.parametrize("version", ["q/../../escaped", "..", "1.0/x", ".hidden", "a" * 65, "1 0"])
def test_unsafe_versions_and_names_are_refused_before_any_build(tmp_path, capsys, version):
    store = tmp_path / "store"
    start = time.perf_counter()
    assert main(["archive", "--variant", "b4-mobile", "--version", version, "--export-path", str(store)]) == 2
    assert time.perf_counter() - start < 1.0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "version" in err and "not allowed" in err
    assert not list(tmp_path.rglob("*.mar")) and not (tmp_path / "escaped").exists()
    assert main(["archive", "--variant", "b4-mobile", "--version", "1.0", "--model-name", "../x",
                 "--export-path", str(store)]) == 2
    assert "model name '../x' is not allowed" in capsys.readouterr().err


def test_a_fifo_in_the_holdout_folder_is_skipped_not_read(tmp_path):
    holdout = tmp_path / "holdout"
    holdout.mkdir()
    os.mkfifo(holdout / "face.jpg")  # reading it would block forever
    run = cli("archive", "--variant", "b4-mobile", "--version", "1", "--export-path", str(tmp_path), "--quantize",
              "fp16", "--holdout", str(holdout), timeout=60)
    assert run.returncode == 2 and "holds no image files" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("args, message", [
    (["archive", "--variant", "b9-nope", "--version", "1"], "unknown variant 'b9-nope'; known: "),
    (["archive", "--variant", "b4-mobile", "--version", "1", "--checkpoint", "/no/such.pt"], "/no/such.pt"),
    (["visualize", "/no/such.json", "/no/clip.mp4"], "/no/such.json"),
    (["predict", "/no/such.jpg"], "/no/such.jpg"),
])
def test_errors_are_one_line_without_a_traceback(tmp_path, args, message):
    # from an empty directory: a `make serve` in the checkout leaves a key file whose skip is reported
    run = cli(*args, "--export-path", str(tmp_path), cwd=tmp_path) if args[0] == "archive" else cli(*args, cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().count("\n") == 0 and message in run.stderr and "Traceback" not in run.stderr
    debug = cli("--debug", *args, "--export-path", str(tmp_path)) if args[0] == "archive" else cli("--debug", *args)
    assert "Traceback" in debug.stderr


def write_keys(directory, addresses, pid=None, key="k"):
    directory.mkdir(parents=True, exist_ok=True)
    auth.write_key_file(directory / auth.KEY_FILE_NAME, {"inference": key})
    if addresses is not None:
        auth.write_server_record(directory / auth.KEY_FILE_NAME, pid or os.getpid(), addresses)
    return directory / auth.KEY_FILE_NAME


def test_the_key_file_of_the_server_at_that_address_wins_over_a_stale_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(auth.REGISTRY_VARIABLE, raising=False)
    url = "http://127.0.0.1:18080"
    current = write_keys(tmp_path / auth.DEFAULT_WORKDIRS["torchserve"], [url], key="current")
    elsewhere = write_keys(tmp_path / "elsewhere", ["http://127.0.0.1:9999"], key="elsewhere")
    monkeypatch.setenv(auth.KEY_FILE_VARIABLE, str(elsewhere))
    keys = auth.ServerKeys.for_url(url)
    assert keys.key("inference") == "current" and keys.path.resolve() == current.resolve()
    assert any(f"skipped {elsewhere}" in note and "127.0.0.1:9999" in note for note in keys.notes)
    # a server that is gone: its record's pid no longer runs what wrote it
    gone = write_keys(tmp_path / "gone", [url], key="gone")
    record = json.loads((gone.parent / auth.RECORD_NAME).read_text())
    (gone.parent / auth.RECORD_NAME).write_text(json.dumps({**record, "started": record["started"] - 1000}))
    monkeypatch.setenv(auth.KEY_FILE_VARIABLE, str(gone))
    keys = auth.ServerKeys.for_url(url)
    assert keys.key("inference") == "current" and "no longer running" in " ".join(keys.notes)
    # without a record (a server started by hand), $DEEPFAKE_KEY_FILE is used; --key-file always is
    by_hand = write_keys(tmp_path / "by-hand", None, key="by-hand")
    monkeypatch.setenv(auth.KEY_FILE_VARIABLE, str(by_hand))
    current.unlink()
    assert auth.ServerKeys.for_url(url).key("inference") == "by-hand"
    assert auth.ServerKeys.for_url(url, elsewhere).key("inference") == "elsewhere"


def test_the_command_line_never_writes_the_environment(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_keys(tmp_path / auth.DEFAULT_WORKDIRS["torchserve"], ["http://127.0.0.1:8080"])
    before = dict(os.environ)
    main(["key", "inference"])
    (tmp_path / "face.jpg").write_bytes(b"\xff\xd8\xff")
    main(["predict", "face.jpg", "--url", "http://127.0.0.1:9"])
    assert dict(os.environ) == before
    capsys.readouterr()


def test_a_401_says_where_the_key_came_from(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(auth.REGISTRY_VARIABLE, raising=False)
    monkeypatch.delenv(auth.KEY_FILE_VARIABLE, raising=False)
    keys = auth.ServerKeys.for_url("http://127.0.0.1:9")
    assert keys.path is None and "no key file found (looked at --key-file" in keys.describe()
    assert main(["key", "inference", "--url", "http://127.0.0.1:9"]) == 2
    assert "no inference key for http://127.0.0.1:9: no key file found" in capsys.readouterr().err


@pytest.mark.server
def test_demo_builds_serves_and_stops_cleanly_on_ctrl_c(tmp_path):
    """`make serve`'s command: it builds the archive, serves, and on Ctrl-C stops TorchServe and exits 0.
    It crashed (SIGSEGV, TorchServe left running) while the build's OpenVINO runtime lived in it."""
    import psutil

    demo = subprocess.Popen([sys.executable, "-m", "deepfake_serving.cli", "demo", "--ports", "free",
                             "--model-store", str(tmp_path / "store"), "--workdir", str(tmp_path / "work")],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    while demo.poll() is None and "Ctrl-C stops it" not in (lines[-1] if lines else ""):
        lines.append(demo.stdout.readline())
    assert "REST 200, gRPC 200, same answer over both: True" in "".join(lines), "".join(lines)[-2000:]
    servers = [p for p in psutil.Process(demo.pid).children(recursive=True) if "ts.model_server" in " ".join(p.cmdline())]
    assert servers
    demo.send_signal(signal.SIGINT)
    assert demo.wait(timeout=120) == 0, demo.stdout.read()[-2000:]
    psutil.wait_procs(servers, timeout=30)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in servers)
