# nextword: next-word prediction service.
#
#   DOCKER_BUILDKIT=1 docker build -t nextword .                      # serving image (default)
#   DOCKER_BUILDKIT=1 docker build --target train -t nextword-train . # training image (+ TF)
#
# BuildKit builds only the stages a target needs; the legacy builder would also build `train`.
#
# Stages:
#   base          python:3.11-slim + environment + an unprivileged user
#   requirements  the dependency lists, read from pyproject.toml
#   wheel         the nextword wheel (the only stage that sees the source)
#   train         `nextword train`: TensorFlow (the `train` extra) + the wheel
#   libraries     the serving dependencies, installed aside and slimmed (symbols stripped)
#   serve         `nextword serve`: those libraries + the wheel + the models in model_store/
#
# Dependencies are installed from the lists in pyproject.toml, at the versions pinned in
# requirements/constraints.txt (pip constraints), before any source is copied, so a change under app/
# rebuilds only the wheel and one small layer.

# ---------------------------------------------------------------------------------------
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN groupadd --system --gid 10001 nextword \
 && useradd --system --uid 10001 --gid nextword --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin nextword
WORKDIR /app

# ---------------------------------------------------------------------------------------
# requirements.txt / requirements-train.txt from [project] dependencies (+ the `train`
# extra). The install layers below depend on these lists, not on the whole pyproject.toml:
# editing the version or the tool settings there keeps them cached.
FROM base AS requirements
COPY pyproject.toml /tmp/pyproject.toml
RUN python -c "import tomllib; \
p = tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']; \
base = p['dependencies']; train = p['optional-dependencies']['train']; \
open('/requirements.txt', 'w').write('\n'.join(base) + '\n'); \
open('/requirements-train.txt', 'w').write('\n'.join(base + train) + '\n')"

# ---------------------------------------------------------------------------------------
FROM base AS wheel
# The build backend at the locked versions (the lock holds setuptools and wheel).
COPY requirements/constraints.txt /tmp/constraints.txt
RUN pip install --no-cache-dir -c /tmp/constraints.txt setuptools wheel
WORKDIR /src
# README.m[d]: the readme named in pyproject.toml, copied when it exists.
COPY pyproject.toml README.m[d] ./
COPY app ./app
RUN pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels .

# ---------------------------------------------------------------------------------------
# Training image: docker build --target train -t nextword-train .
#   docker run --rm --user "$(id -u):$(id -g)" \
#     -v "$PWD/corpus:/data:ro" -v "$PWD/model_store:/app/model_store" \
#     nextword-train /data/train.txt --name mymodel --epochs 4
# Writes /app/model_store/<name>/<next version>/ (the working directory's model_store).
FROM base AS train
COPY --from=requirements /requirements-train.txt /tmp/requirements-train.txt
COPY requirements/constraints.txt /tmp/constraints.txt
RUN pip install --no-cache-dir -c /tmp/constraints.txt -r /tmp/requirements-train.txt \
 && rm /tmp/requirements-train.txt /tmp/constraints.txt
COPY --from=wheel /wheels/ /tmp/wheels/
RUN pip install --no-cache-dir --no-deps /tmp/wheels/*.whl && rm -rf /tmp/wheels
# Writable caches for any --user (Keras and Matplotlib write to the home folder otherwise).
ENV KERAS_HOME=/tmp/.keras \
    MPLCONFIGDIR=/tmp/matplotlib \
    TF_CPP_MIN_LOG_LEVEL=2
USER nextword
ENTRYPOINT ["nextword", "train"]
CMD ["--help"]

# ---------------------------------------------------------------------------------------
# The serving dependencies, installed under /install (copied into /usr/local below) and
# slimmed where nothing at run time looks: debug symbols in the compiled extensions (uvloop's
# alone is 13.6 MB with them, 1.6 MB without), type stubs, NumPy's test suites and what only
# they or a build use (its SIMD test module, C headers, Fortran wrapper generator, examples). Built aside so that only the slimmed files reach the image's layers. The vendored
# libraries under *.libs/ (OpenBLAS) are left as they are: auditwheel's patchelf moved their
# segments, and strip would make them unloadable.
FROM base AS libraries
COPY --from=requirements /requirements.txt /tmp/requirements.txt
COPY requirements/constraints.txt /tmp/constraints.txt
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends binutils >/dev/null \
 && pip install --no-cache-dir --prefix=/install -c /tmp/constraints.txt -r /tmp/requirements.txt \
 && site=/install/lib/python3.11/site-packages \
 && find "$site/numpy" -depth -type d -name tests -exec rm -rf {} + \
 && rm -rf "$site/numpy/f2py" "$site/numpy/_core/include" "$site/numpy/_core/_simd".*.so \
        "$site/numpy/_pyinstaller" "$site/numpy/random/_examples" \
        /install/bin/f2py /install/bin/numpy-config \
 && find /install -name '*.pyi' -type f -delete \
 && find /install -name '*.cpython-*.so' -type f -exec strip --strip-unneeded {} +

# ---------------------------------------------------------------------------------------
# Serving image (default target): no TensorFlow, NumPy forward pass.
FROM base AS serve
COPY --from=libraries /install/ /usr/local/
# The models baked in: every published version under model_store/ (.dockerignore drops the
# hidden .tmp-* work folders). Mount another store over /app/model_store to serve others.
COPY model_store/ /app/model_store/
COPY --from=wheel /wheels/ /tmp/wheels/
RUN pip install --no-cache-dir --no-deps /tmp/wheels/*.whl && rm -rf /tmp/wheels
ENV NEXTWORD_HOST=0.0.0.0 \
    NEXTWORD_PORT=8000 \
    NEXTWORD_MODEL_STORE=/app/model_store \
    NEXTWORD_MODEL_NAME=ptb \
    NEXTWORD_MODEL_VERSION=latest
USER nextword
EXPOSE 8000
# Liveness: python's urllib, since the slim image has no curl. A short interval so that
# `docker run` reaches "healthy" within a few seconds.
HEALTHCHECK --interval=2s --timeout=2s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('NEXTWORD_PORT', '8000'), timeout=1.5)"]
# Exec form, no shell: uvicorn is PID 1, receives SIGTERM and shuts down gracefully.
STOPSIGNAL SIGTERM
CMD ["nextword", "serve"]
