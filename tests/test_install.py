"""A plain (non-editable) install works: the wheel, installed into a fresh venv, run from an empty
directory outside the checkout, archives, serves and predicts to a 200, and its --help and predict
import no torch. Installs by role: a venv with the base alone (no torch at all) predicts against that
server; one with the base and the Triton extra serves a repository built elsewhere and answers."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from packaging.requirements import Requirement

from deepfake_serving.media import samples
from deepfake_serving.serving.launch.triton_repository import build_classifier_version, write_configs
from helpers.role_venv import closure, link_distributions, role_venv

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
    """A fresh venv holding the wheel and what the documented TorchServe install, ``[serve]``, brings and
    nothing else (no scikit-image: the held-out faces of the engine's proof ship with the package)."""
    tmp = tmp_path_factory.mktemp("install")
    bin_dir = role_venv(tmp / "venv", wheel, ("serve",))
    empty = tmp / "elsewhere"
    empty.mkdir()
    return bin_dir, empty


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


def start_serving(command: list[str], cwd: Path, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """``deepfake-serving serve`` started and read up to its 'serving on URL' line: (process, URL)."""
    server = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    line = ""
    while "Ctrl-C" not in line and server.poll() is None:
        line = server.stdout.readline()
    if "TorchServe is serving on http://127.0.0.1:" not in line:
        server.kill()
        pytest.fail(f"serve did not start: {line}")
    return server, line.split("serving on ")[1].split(" ")[0]


def test_archive_serve_and_predict_from_an_empty_directory(installed, wheel, tmp_path):
    bin_dir, cwd = installed
    archived = run(bin_dir, cwd, "archive", "--variant", "b4-mobile", "--version", "1.0", timeout=600)
    assert archived.returncode == 0, archived.stderr[-2000:]
    assert (cwd / "model_store" / "b4-mobile-v1.0.mar").is_file()
    server, url = start_serving([str(bin_dir / "deepfake-serving"), "serve", "--ports", "free"], cwd)
    try:
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
        # the explain model loads without torch and says what to install
        explained = run(triton, tmp_path, "explain", "face.jpg", "--backend", "triton", "--url", url, timeout=300)
        refused = json.loads(explained.stdout.strip().splitlines()[-1])
        assert explained.returncode == 1 and (refused["status"], refused["error"]["code"]) == (409, "not_explainable")
        assert "deepfake-serving[explain]" in refused["error"]["message"]
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=120)


# PyTorch's CPU-only wheel, as a deployment takes it from download.pytorch.org/whl/cpu (on disk here).
CPU_TORCH_WHEEL = Path("/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")


def lean_worker_venv(directory: Path, wheel: Path) -> Path:
    """The documented lean worker install: the CPU torch wheel, then the wheel with its [worker] extra."""
    bin_dir = role_venv(directory, wheel, ("worker",))
    python = str(bin_dir / "python")
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(CPU_TORCH_WHEEL)],
                   check=True)
    needs = subprocess.run([python, "-c", "from importlib import metadata; print(*metadata.requires('torch'), sep='\\n')"],
                           capture_output=True, text=True, check=True).stdout.split("\n")
    torch_site = directory / "torch-requirements"
    link_distributions(closure([Requirement(line) for line in needs if line and "extra ==" not in line]), torch_site)
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "torch-requirements.pth").write_text(f"{torch_site}\n")
    return bin_dir


@pytest.mark.skipif(not CPU_TORCH_WHEEL.is_file(), reason=f"{CPU_TORCH_WHEEL} (PyTorch's CPU wheel) is not here")
def test_a_lean_worker_with_cpu_torch_serves_a_graph_archive_built_elsewhere(wheel, tmp_path):
    """TorchServe from a venv holding the CPU torch wheel and the [worker] extra (no torchvision, timm, onnx):
    its worker runs that torch and answers as the archive does in this process; the torch engine there
    says what it would need."""
    from deepfake_serving.bundle import Bundle
    from deepfake_serving.pipeline import load_image_pipeline
    from deepfake_serving.serving.launch.archive import build_archive

    lean = lean_worker_venv(tmp_path / "worker", wheel)
    missing = subprocess.run([str(lean / "python"), "-c", "import importlib.util as u; print([m for m in "
                              "('torchvision', 'timm', 'onnx', 'model_archiver') if u.find_spec(m)])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert missing == "[]"
    store = tmp_path / "model_store"
    archive = build_archive("b4-mobile", "1.0", export_path=store)
    bundle_dir = tmp_path / "bundle"
    subprocess.run(["unzip", "-q", str(archive), "-d", str(bundle_dir)], check=True)
    expected = load_image_pipeline(bundle_dir).predict(samples.astronaut_jpeg())
    (tmp_path / "face.jpg").write_bytes(samples.astronaut_jpeg())
    server, url = start_serving([str(lean / "deepfake-serving"), "serve", "--model-store", str(store), "--workdir",
                                 str(tmp_path / "work"), "--ports", "free"], tmp_path,
                                {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")})
    try:
        answer = run(lean, tmp_path, "--key-file", str(tmp_path / "work" / "key_file.json"), "predict", "face.jpg",
                     "--url", url, "--save", "answer.json", timeout=300)
        assert answer.returncode == 0, answer.stdout[-1000:] + answer.stderr[-1000:]
        served = json.loads((tmp_path / "answer.json").read_text())
        assert served["faces"][0]["fake_probability"] == pytest.approx(expected["faces"][0]["fake_probability"],
                                                                       abs=1e-6)
        unexplained = run(lean, tmp_path, "--key-file", str(tmp_path / "work" / "key_file.json"), "explain",
                          "face.jpg", "--url", url, timeout=300)
        refusal = json.loads(unexplained.stdout.splitlines()[-1])
        assert unexplained.returncode == 1 and (refusal["status"], refusal["error"]["code"]) == (409, "not_explainable")
        assert "pip install 'deepfake-serving[explain]'" in refusal["error"]["message"]
        workers = [p for p in psutil.Process(server.pid).children(recursive=True)
                   if "model_service_worker" in " ".join(p.cmdline())]
        assert workers and all(Path(p.cmdline()[0]).parent == lean for p in workers)
        maps = Path(f"/proc/{workers[0].pid}/maps").read_text()
        assert str(tmp_path / "worker") in maps and "libtorch_cpu.so" in maps and "libtorch_cuda" not in maps
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=120)
    refused = subprocess.run([str(lean / "python"), "-c", "import sys; from deepfake_serving.bundle import Bundle\n"
                              "try:\n    Bundle.open(sys.argv[1]).scorer(engine='torch')\n"
                              "except Exception as e:\n    print(type(e).__name__, e)", str(bundle_dir)],
                             capture_output=True, text=True)
    assert "CheckpointError the torch engine builds the variant's network, which needs" in refused.stdout, refused
    assert "--engine onnxruntime, openvino or auto" in refused.stdout
    assert Bundle.open(bundle_dir).manifest.engine_decision["requested"] == "auto"
