# The committed model repository in NVIDIA's official Triton container (24.04: the same Triton
# release, 2.45, as the tritonserver that nvidia-pytriton 0.5.7 bundles and the tests run).
# NOT RUN on the project's machines (no Docker engine, no GPU): written from Triton's documentation.
#
#   docker build -f docker/triton.Dockerfile -t deepfake-triton .
#   docker run --gpus all --shm-size=1g -p 8000:8000 -p 8001:8001 -p 8002:8002 \
#       -v /path/to/checkpoints:/checkpoints deepfake-triton            # random weights if none given
FROM nvcr.io/nvidia/tritonserver:24.04-py3

# The package pins Python 3.11; the container's own Python is 3.10.
RUN apt-get update && apt-get install -y --no-install-recommends software-properties-common \
 && add-apt-repository -y ppa:deadsnakes/ppa && apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
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

# Build classifier version 1 from /checkpoints/*.pt[h] (or random weights), then serve the variant
# with the repository exactly as committed: explicit model control, KIND_AUTO instances.
CMD set -e; \
    CKPTS=$(for f in /checkpoints/*; do [ -f "$f" ] && printf -- '--checkpoint %s ' "$f"; done); \
    deepfake-serving triton build --variant "$VARIANT" --version 1 $CKPTS; \
    MODEL=$(echo "$VARIANT" | tr - _); \
    # bytecode now, not by the stubs while loading: a directory changed after its load makes Triton
    # reload that model from its on-disk config at the next ensemble load (see deepfake_serving/serving/launch/triton_repository.py)
    python3 -m compileall -q model_repository; \
    # every API but inference, health and metadata only with this key, as the launcher does (a load
    # request can carry code; the shared-memory API can abort the server). No transport limit here:
    # put the nginx front of deepfake_serving/serving/launch/triton_front.py (or your ingress's body limit) before it.
    KEY=${REPOSITORY_KEY:-$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')}; \
    install -d -m 0700 /run/deepfake; \
    (umask 077; printf '{"management": {"key": "%s"}}' "$KEY" > /run/deepfake/key_file.json); \
    exec tritonserver --model-repository=/opt/deepfake-serving/model_repository \
        --model-control-mode=explicit --load-model="$MODEL" --load-model="${MODEL}_video" \
        --disable-auto-complete-config \
        --http-restricted-api="model-repository,shared-memory,logging,trace,statistics,model-config:authorization=Bearer $KEY" \
        --grpc-restricted-protocol="model-repository,shared-memory,logging,trace,statistics,model-config:authorization=Bearer $KEY"
