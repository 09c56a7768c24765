"""A plain (non-editable) install works: the wheel, installed into a fresh venv, run from an empty
directory outside the checkout, archives, serves and predicts to a 200, and its --help and predict
import no torch. Installs by role: a venv with the base alone (no torch at all) predicts against that
server; one with the base and the Triton extra serves a repository built elsewhere and answers."""

import os
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from deepfake_serving.media import samples
from deepfake_serving.serving.launch.triton_repository import build_classifier_version, write_configs
from helpers.role_venv import role_venv

pytestmark = pytest.mark.server
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp), str(ROOT)], check=True, cwd=tmp)
    (built,) = tmp.glob("deepfake_serving-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(tmp_path_factory, wheel):
    """A fresh venv holding the wheel only; the dependencies come from this environment's site-packages
    through a .pth line (a path, so the checkout's editable-install hook there is not run)."""
    tmp = tmp_path_factory.mktemp("install")
    subprocess.run([sys.executable, "-m", "venv", str(tmp / "venv")], check=True)
    python = tmp / "venv" / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)], check=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    empty = tmp / "elsewhere"
    empty.mkdir()
    return tmp / "venv" / "bin", empty


def run(bin_dir: Path, cwd: Path, *args, **kwargs):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(bin_dir / "deepfake-serving"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, **kwargs)


def test_the_installed_package_is_not_the_checkout(installed):
    bin_dir, cwd = installed
    where = subprocess.run([str(bin_dir / "python"), "-c", "import deepfake_serving; print(deepfake_serving.__file__)"],
                           cwd=cwd, capture_output=True, text=True, check=True).stdout
    assert str(bin_dir.parent) in where and str(ROOT) not in where


def no_torch(bin_dir: Path) -> bool:
    found = subprocess.run([str(bin_dir / "python"), "-c", "import importlib.util as u; print(u.find_spec('torch'))"],
                           capture_output=True, text=True, check=True).stdout.strip()
    return found == "None"


def test_help_imports_no_torch(installed):
    bin_dir, cwd = installed
    probe = ("import sys\nfrom deepfake_serving.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n"
             "    pass\nprint('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    for args in (["--help"], ["predict", "--help"], ["archive", "--help"]):
        out = subprocess.run([str(bin_dir / "python"), "-c", probe, *args], cwd=cwd, capture_output=True, text=True)
        assert out.stdout.strip().endswith("NO-TORCH"), (args, out.stdout[-300:], out.stderr[-300:])


def test_archive_serve_and_predict_from_an_empty_directory(installed, wheel, tmp_path):
    bin_dir, cwd = installed
    archived = run(bin_dir, cwd, "archive", "--variant", "b4-mobile", "--version", "1.0", timeout=600)
    assert archived.returncode == 0, archived.stderr[-2000:]
    assert (cwd / "model_store" / "b4-mobile-v1.0.mar").is_file()
    server = subprocess.Popen([str(bin_dir / "deepfake-serving"), "serve", "--ports", "free"], cwd=cwd,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = ""
        while "Ctrl-C" not in line and server.poll() is None:
            line = server.stdout.readline()
        assert "TorchServe is serving on http://127.0.0.1:" in line, line
        url = line.split("serving on ")[1].split(" ")[0]
        (cwd / "face.jpg").write_bytes(samples.astronaut_jpeg())
        probe = ("import sys\nfrom deepfake_serving.cli import main\nrc = main(sys.argv[1:])\n"
                 "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', rc)")
        # `make serve` then `make test` left $DEEPFAKE_KEY_FILE naming a key file of a server that is gone:
        # it is reported and skipped, not preferred over the running server's.
        stale = cwd / "old" / "key_file.json"
        stale.parent.mkdir()
        stale.write_text('{"inference": {"key": "stale"}}')
        (stale.parent / "server.json").write_text('{"pid": 1, "started": 0, "addresses": ["127.0.0.1:8080"]}')
        answer = subprocess.run([str(bin_dir / "python"), "-c", probe, "predict", "face.jpg", "--url", url,
                                 "--save", "answer.json"], cwd=cwd, capture_output=True, text=True, timeout=300,
                                env={**os.environ, "DEEPFAKE_KEY_FILE": str(stale)})
        assert answer.stdout.strip().endswith("NO-TORCH 0"), answer.stdout[-1000:] + answer.stderr[-1000:]
        assert f"skipped {stale}" in answer.stderr
        assert '"status": 200' in (cwd / "answer.json").read_text()

        client = role_venv(tmp_path / "client", wheel)  # the base alone: what a client installs
        assert no_torch(client)
        answer = run(client, tmp_path, "--key-file", str(cwd / "runtime" / "torchserve" / "key_file.json"), "predict",
                     str(cwd / "face.jpg"), "--url", url, "--save", "client.json", timeout=300)
        assert answer.returncode == 0, answer.stdout[-1000:] + answer.stderr[-1000:]
        assert '"status": 200' in (tmp_path / "client.json").read_text()
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=120)


def test_a_torch_free_triton_box_serves_a_repository_built_elsewhere(wheel, tmp_path):
    repository = tmp_path / "repository"
    write_configs(repository, ["b4-mobile"])
    build_classifier_version("b4-mobile", 1, repository=repository)  # here, with torch
    triton = role_venv(tmp_path / "triton", wheel, ("triton",))
    assert no_torch(triton)
    (tmp_path / "face.jpg").write_bytes(samples.astronaut_jpeg())
    server = subprocess.Popen([str(triton / "deepfake-serving"), "triton", "serve", "--repository", str(repository),
                               "--workdir", str(tmp_path / "work"), "--ports", "free"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")})
    try:
        output = []
        while server.poll() is None and "Ctrl-C" not in (output[-1] if output else ""):
            output.append(server.stdout.readline())
        assert "Triton is serving" in output[-1], "".join(output[-40:])
        url = output[-1].split(" on ")[1].split(" ")[0]
        answer = run(triton, tmp_path, "predict", "face.jpg", "--backend", "triton", "--url", url, "--save",
                     "answer.json", timeout=300)
        assert answer.returncode == 0, answer.stdout[-1000:] + answer.stderr[-1000:]
        saved = (tmp_path / "answer.json").read_text()
        assert '"status": 200' in saved and '"face_count": 1' in saved
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=120)
