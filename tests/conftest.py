import os
import shutil
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest
import torch

from deepfake_serving.media import samples
from deepfake_serving.serving.client.clients import GrpcClient, RestClient

torch.set_num_threads(2)


# Disk: the suite writes ~15 GB of archives, repositories and checkpoints. A passing test's ``tmp_path``
# goes at its end (``tmp_path_retention_policy = "failed"`` in pyproject.toml); what a module's fixtures
# made with ``tmp_path_factory`` goes at the module's end, unless a test in it failed. A session-scoped
# fixture, shared by later modules, makes its folder with ``session_dir``.
_session_dirs: set[Path] = set()


def session_dir(tmp_path_factory, name: str) -> Path:
    path = tmp_path_factory.mktemp(name)
    _session_dirs.add(path)
    return path


@pytest.fixture(scope="module", autouse=True)
def _remove_module_dirs(request, tmp_path_factory):
    """Set up before, and torn down after, every other module-scoped fixture: servers have stopped."""
    base = tmp_path_factory.getbasetemp()
    before, failed = set(base.iterdir()), request.session.testsfailed
    yield
    if request.session.testsfailed == failed:
        for path in set(base.iterdir()) - before - _session_dirs:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def astronaut_jpeg() -> bytes:
    return samples.astronaut_jpeg()


@pytest.fixture(scope="session")
def two_faces_jpeg() -> bytes:
    return samples.encode(samples.two_faces(), quality=95)


@pytest.fixture(scope="session")
def no_face_jpeg() -> bytes:
    return samples.encode(samples.no_face(), quality=95)


@pytest.fixture(scope="session")
def face_folders(tmp_path_factory):
    from helpers.calibrated import write_face_folders

    return write_face_folders(session_dir(tmp_path_factory, "faces"))


def pytest_collection_modifyitems(items):
    """A test that uses a ``server`` fixture starts a real server: it is marked ``server`` (``make
    test-fast`` runs the others)."""
    for item in items:
        if "server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.server)


# Clients of the ``server`` fixture that each server test module defines.
@pytest.fixture(scope="module")
def rest(server):
    return RestClient(server.inference_url)


@pytest.fixture(scope="module")
def grpc_client(server):
    client = GrpcClient(server.grpc_target)
    yield client
    client.close()
