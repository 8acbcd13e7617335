#!/usr/bin/env bash
# The original cortex (pytorch-cortex 0.0.4) for a machine without network (the GPU machine: Python 3.12,
# torch 2.11 CUDA, transformers 5.x, lightning 2.6.6, botorch 0.18). Two modes:
#   scripts/v1-wheels.sh download [DEST]   (here, with PyPI) py3.12 manylinux/pure wheels, --no-deps, into DEST
#                                          (default ./.whl-v1/); sdist-only pure packages are built into wheels.
#   scripts/v1-wheels.sh install [DEST]    (there, offline) unpacks DEST/*.whl into DEST/site, the original's
#                                          PYTHONPATH; the machine's own torch, numpy, pandas, scipy are used.
# Then: python bench/perf/run.py --original-python python3 --original-pythonpath .whl-v1/site --device cuda
# Versions are those the original resolves on Python 3.11 (../shared/tools/v1-constraints.txt) for every
# package it imports for training and LaMBO that the GPU machine lacks or holds at an incompatible version:
# lightning 1.9.5 (whose `import lightning` pulls lightning.app: fastapi/starlette/pydantic 1, lightning-cloud,
# uvicorn, ...), transformers < 4.50 with its tokenizers and huggingface_hub, botorch 0.12 with gpytorch and
# linear_operator, Hydra/OmegaConf/antlr4, wandb 0.15 (imported at `import cortex`), s3fs 0.4 + boto3, edlib,
# and numpy 1.26 (the original and wandb 0.15 need numpy < 2; the machine's numpy 2 stays for this project).
set -euo pipefail
MODE=${1:?usage: scripts/v1-wheels.sh download|install [DEST]}
DEST=${2:-.whl-v1}
PY=${PYTHON:-python3}

PURE_OR_BINARY=(
  pytorch-cortex==0.0.4 lightning==1.9.5 pytorch-lightning==1.9.5 lightning-utilities==0.15.3
  lightning-cloud==0.5.32 fastapi==0.88.0 starlette==0.22.0 pydantic==1.10.27 croniter==1.3.15
  deepdiff==7.0.1 ordered-set==4.1.0 python-multipart==0.0.34 uvicorn==0.54.0 websocket-client==1.9.2
  websockets==17.4 beautifulsoup4==4.15.0 soupsieve==4.1.3 inquirer==3.4.1 blessed==1.52.0 readchar==4.2.2
  arrow==1.4.0 h11==0.16.0
  transformers==4.49.0 tokenizers==0.21.4 huggingface_hub==0.36.2
  botorch==0.12.0 gpytorch==1.13 linear-operator==0.5.3 jaxtyping==0.2.19 typeguard==4.6.1
  multipledispatch==1.0.0 pyro-ppl==1.9.2 pyro-api==0.1.2 opt_einsum==3.4.0
  hydra-core==1.3.8 omegaconf==2.3.1 cachetools==8.0.2 edlib==1.3.9.post1 tabulate==0.10.0 pytorch-warmup==0.2.0
  wandb==0.15.12 GitPython==3.1.45 gitdb==4.0.12 smmap==5.0.3 sentry-sdk==2.35.0 docker-pycreds==0.4.0
  setproctitle==1.3.6 appdirs==1.4.4 protobuf==4.25.8
  s3fs==0.4.2 boto3==1.40.0 botocore==1.40.0 s3transfer==0.13.1 jmespath==1.0.1 universal_pathlib==0.2.6
  fsspec==2023.12.2
  numpy==1.26.4
)
SDIST_ONLY=(antlr4-python3-runtime==4.9.3 pathtools==0.1.2)

case "$MODE" in
  download)
    mkdir -p "$DEST"
    "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform any -d "$DEST" "${PURE_OR_BINARY[@]}"
    "$PY" -m pip wheel --no-deps -w "$DEST" "${SDIST_ONLY[@]}"
    # botocore ships 24 MB of AWS service models; the original imports it (s3fs) but trains and designs without
    # a client, so keep only the models of s3/sts/sso to stay within the GPU machine's 64 MiB transfer.
    tmp=$(mktemp -d)
    (cd "$tmp" && unzip -q "$OLDPWD/$DEST"/botocore-*.whl \
      && find botocore/data -mindepth 1 -maxdepth 1 -type d | grep -vE "/(s3|sts|sso|sso-oidc)$" | xargs rm -rf \
      && rm "$OLDPWD/$DEST"/botocore-*.whl && zip -qr "$OLDPWD/$DEST/botocore-1.40.0-py3-none-any.whl" .)
    rm -rf "$tmp"
    du -sh "$DEST"
    ;;
  install)
    "$PY" -m pip install --no-deps --no-index --target "$DEST/site" "$DEST"/*.whl
    ;;
  *)
    echo "mode=$MODE; expected download or install" >&2
    exit 2
    ;;
esac
