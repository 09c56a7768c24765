import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest
import torch

from deepfake_serving.media import samples
from deepfake_serving.serving.client.clients import GrpcClient, RestClient

torch.set_num_threads(2)


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

    return write_face_folders(tmp_path_factory.mktemp("faces"))


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
