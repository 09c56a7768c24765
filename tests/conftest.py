import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest
import torch

from deepfake_serving import samples
from deepfake_serving.serving.client import GrpcClient, RestClient

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


def box_inside(box, region) -> bool:
    """True when the box's centre lies inside the region (x1, y1, x2, y2)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return region[0] <= cx <= region[2] and region[1] <= cy <= region[3]


# Clients of the ``server`` fixture that each server test module defines.
@pytest.fixture(scope="module")
def rest(server):
    return RestClient(server.inference_url)


@pytest.fixture(scope="module")
def grpc_client(server):
    client = GrpcClient(server.grpc_target)
    yield client
    client.close()
