# The committed model repository in NVIDIA's official Triton container (24.04: the same Triton
# release, 2.45, as the tritonserver that nvidia-pytriton 0.5.7 bundles and the tests run).
# NOT RUN on the project's machines (no Docker engine, no GPU): written from Triton's documentation.
#
#   docker build -f docker/triton.Dockerfile -t deepfake-triton .
#   docker run --gpus all --shm-size=1g -p 8000:8000 -p 8001:8001 -p 8002:8002 \
#       -v /path/to/checkpoints:/checkpoints deepfake-triton            # random weights if none given
FROM nvcr.io/nvidia/tritonserver:24.04-py3

# The package pins Python 3.11; the container's own Python is 3.10. nginx is the launcher's transport
# limit in front of tritonserver (deepfake_serving/serving/launch/triton_front.py).
RUN apt-get update && apt-get install -y --no-install-recommends software-properties-common \
 && add-apt-repository -y ppa:deadsnakes/ppa && apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv nginx \
 && rm -rf /var/lib/apt/lists/*

COPY . /opt/deepfake-serving
RUN python3.11 -m venv /opt/venv \
 # [build] (torch) only because the CMD below builds classifier version 1 from your checkpoints; a
 # container serving versions built elsewhere needs [triton] alone.
 && /opt/venv/bin/pip install --no-cache-dir -e '/opt/deepfake-serving[triton,build]' \
 # ONNX Runtime with the CUDA provider (the classifier picks CUDAExecutionProvider when present)
 && /opt/venv/bin/pip install --no-cache-dir onnxruntime-gpu==1.31.1 \
 # The container's python-backend stub is built for its Python 3.10; nvidia-pytriton carries the
 # stub of the same Triton release for 3.11.
 && cp /opt/venv/lib/python3.11/site-packages/pytriton/tritonserver/python_backend_stubs/3.11/triton_python_backend_stub \
       /opt/tritonserver/backends/python/triton_python_backend_stub

# The stub runs the python3 first on PATH, so the venv's packages are the ones it sees.
ENV PATH=/opt/venv/bin:$PATH VARIANT=b4-mobile
WORKDIR /opt/deepfake-serving

# The entry point is the project's launcher under its supervisor, as `deepfake-serving triton serve` runs
# it anywhere: classifier version 1 built from /checkpoints/*.pt[h] (random weights if none), the container's
# tritonserver in explicit model control, every API but inference, health and metadata behind a key written
# to /run/deepfake/key_file.json (0600; `docker exec` reads it), nginx's transport limit in front, and a
# supervisor that reloads a model whose stub died and restarts tritonserver when it crashed or stopped
# answering real inferences (docs/monitoring.md). The launcher stays PID 1's child: `docker stop` (SIGTERM)
# stops tritonserver cleanly.
CMD set -e; \
    CKPTS=$(for f in /checkpoints/*; do [ -f "$f" ] && printf -- '--checkpoint %s ' "$f"; done); \
    exec deepfake-serving triton serve --variant "$VARIANT" $CKPTS --host 0.0.0.0 \
        --tritonserver /opt/tritonserver --workdir /run/deepfake --repository /opt/deepfake-serving/model_repository
