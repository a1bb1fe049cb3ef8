# syntax=docker/dockerfile:1
# gradcam-serve: build with the same scripts CI runs, run as a non-root user.
#
#   docker build -t gradcam-serve .
#   docker run -p 8080:8080 -v gradcam-cache:/cache gradcam-serve
#
# libtorch comes from the pinned PyPI torch wheel (scripts/requirements.txt) installed by
# scripts/setup.sh into GRADCAM_CACHE; the binary carries an rpath to it, so the runtime image
# keeps that same path.

FROM rust:1.95-bookworm AS build
ENV GRADCAM_CACHE=/opt/gradcam
# npm: scripts/setup.sh installs the interactive API reference (/docs) that the binary embeds.
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-pip npm \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY scripts/ scripts/
# The Python environment first: it changes least and is the largest layer.
RUN GRADCAM_SKIP_SYSTEM_PACKAGES=1 scripts/setup.sh
COPY Cargo.toml Cargo.lock build.rs openapi.yaml ./
COPY src/ src/
COPY benches/ benches/
RUN . scripts/env.sh && cargo build --release --locked --bin gradcam-serve \
    && cp target/release/gradcam-serve /usr/local/bin/

FROM debian:bookworm-slim AS runtime
# curl for the HEALTHCHECK; libtorch brings its own OpenMP runtime (libgomp) in torch/lib.
# A fixed uid and gid (10001) that deploy/k8s runs as. The service writes only to its cache
# volume, so nothing else stays writable for its user, the shared temporary directories
# included (tests/e2e/container.rs checks all of this on the stage as written here).
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 gradcam \
    && useradd --system --uid 10001 --gid 10001 --home-dir /cache --create-home gradcam \
    && chmod 0755 /tmp /var/tmp /run/lock
# Only libtorch's shared libraries and the CUDA libraries they load, at the path the rpath names,
# and torch's version.py, from which the binary tells the libtorch release it runs on.
ARG SITE=/opt/gradcam/venv/lib/python3.11/site-packages
COPY --from=build ${SITE}/torch/lib ${SITE}/torch/lib
COPY --from=build ${SITE}/torch/version.py ${SITE}/torch/version.py
COPY --from=build ${SITE}/nvidia ${SITE}/nvidia
COPY --from=build /usr/local/bin/gradcam-serve /usr/local/bin/gradcam-serve
USER gradcam
# Downloaded weights live in the cache volume (or mount a file and set GRADCAM_WEIGHTS).
# libtorch's OpenMP threads spin 10 000 times, not libgomp's 300 000, before they sleep after
# each parallel region, so that decoding and rendering get the cores the idle model held
# (README's Performance: "Cores").
ENV GRADCAM_CACHE=/cache \
    GRADCAM_HOST=0.0.0.0 \
    GRADCAM_PORT=8080 \
    GRADCAM_LOG_FORMAT=json \
    GOMP_SPINCOUNT=10000
VOLUME ["/cache"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/health/ready || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["gradcam-serve"]
CMD ["serve"]
