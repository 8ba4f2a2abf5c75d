#!/usr/bin/env bash
# Build the CPU image (docker/Dockerfile.cpu) with Podman and check it for real:
#
#   scripts/image-check.sh                  the CPU image, built and run (what `make test` runs)
#   scripts/image-check.sh --cuda-standin   docker/Dockerfile.cuda built on the local Debian base instead
#                                           of nvidia/cuda (no registry here), and its image inspected
#
#   1. base image: a python:3.11-slim-bookworm stand-in made locally (debootstrap minbase bookworm +
#      Debian's python3/venv), because no image registry may be reachable; cached between runs
#   2. build docker/Dockerfile.cpu on it (build-time only: the host's CA bundle, pip settings and local
#      wheel folders, mounted read-only)
#   3. image hygiene: no compilers, no build-time CA or pip configuration, non-root user, model baked in
#   4. run it with --network=none as its own user, with a volume holding an adapter set made by the
#      image's own CLI, and wait for /health
#   5. the official openai client: a chat request to the base model and one to a task of the set
#   6. the admin API loads a second set (POST /v1/adapter-sets with the bearer token); a chat on it
#   7. /metrics holds orthoserve series; a real Prometheus, configured from docker/prometheus.yml,
#      scrapes the container and its query API returns the per-task latency histogram
#   8. prints the image size, build time and start-to-/health time
#
# --cuda-standin proves that Dockerfile.cuda's steps build (apt packages, `install.sh cuda` with vLLM's
# CUDA build from PyPI, the baked model, the user) and that the image carries the CPU image's
# command, user, health check, settings and volumes; it cannot run the server (no CUDA, no GPU), and
# Ubuntu 24.04's Python 3.12 is Debian's 3.11 here. It needs the CPU image built first.
#
# Any failed step exits non-zero. Needs root (apt-get, podman, nsenter). Re-runs reuse the base images
# in Podman's storage, the debootstrap tarball in the cache folder, and Podman's layer cache.
#
# Environment:
#   IMAGE_CHECK_CACHE  cache folder (default ~/.cache/orthoserve/image-check)
#   IMAGE_CHECK_TAG    tag of the built image (default localhost/orthoserve:cpu, or :cuda-standin)
#   IMAGE_CHECK_KEEP   1: leave the container and Prometheus running at the end (for debugging)
#   IMAGE_CHECK_CONTEXT  build context holding docker/ (default: this repository's working tree; e.g. a
#                      `git archive HEAD` export to check the committed sources only)
#   VENV               the project venv that runs the client side (default <repo>/.venv)
set -euo pipefail

MODE=cpu
case "${1:-}" in
    "") ;;
    --cuda-standin) MODE=cuda ;;
    -h | --help) sed -n '2,35p' "$0"; exit 0 ;;
    *) echo "image-check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
CACHE="${IMAGE_CHECK_CACHE:-$HOME/.cache/orthoserve/image-check}"
CONTEXT="${IMAGE_CHECK_CONTEXT:-$ROOT}"
CPU_TAG=localhost/orthoserve:cpu
if [ "$MODE" = cpu ]; then TAG="${IMAGE_CHECK_TAG:-$CPU_TAG}"; else TAG="${IMAGE_CHECK_TAG:-localhost/orthoserve:cuda-standin}"; fi
KEEP="${IMAGE_CHECK_KEEP:-0}"
DEBIAN_IMAGE=localhost/debian:bookworm
PYTHON_IMAGE=localhost/python-standin:3.11-slim-bookworm
MODEL_DIR=/cache/models/SmolLM2-135M-Instruct
IMAGE_UID=10001
ADMIN_TOKEN="image-check-$RANDOM$RANDOM"
HEALTH_TIMEOUT_S=600

log() { echo "[image-check] $*" >&2; }
fail() { echo "[image-check] FAILED: $*" >&2; exit 1; }
STEP="setup"
CHECK_START=$(date +%s)
step() { STEP="$*"; log "== [$(($(date +%s) - CHECK_START))s] $STEP"; }
trap 'rc=$?; if [ $rc -ne 0 ]; then echo "[image-check] FAILED at step: $STEP (exit $rc)" >&2; fi' EXIT

[ "$(id -u)" -eq 0 ] || fail "needs root (apt-get, podman storage, nsenter into the container's network)"

step "host tools: podman, buildah, debootstrap, runc, prometheus and the project venv"
missing=()
for tool in podman buildah debootstrap runc prometheus promtool; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing the Debian packages for: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        podman buildah debootstrap runc prometheus >/dev/null
fi
for tool in podman buildah debootstrap runc prometheus promtool nsenter flock; do
    command -v "$tool" >/dev/null || fail "$tool is not installed"
done
# The venv is left as it is (`make image-check` sets it up first): other work may be using it.
PY="$VENV/bin/python"
"$PY" -c "import httpx, openai, prometheus_client, yaml" 2>/dev/null \
    || fail "$VENV lacks the dev tools (openai, httpx, pyyaml): run scripts/install.sh cpu --dev"

mkdir -p "$CACHE"
# One check at a time on a machine: they share the cached base images and the image tag.
exec 9>"$CACHE/lock"
flock -n 9 || { log "waiting for another image check to finish"; flock 9; }

# crun cannot run here ("cgroups in hybrid mode not supported"), and containers cannot raise their
# ulimits without CAP_SYS_RESOURCE: runc and fixed ulimits within the sandbox's own.
export CONTAINERS_CONF="$CACHE/containers.conf"
cat >"$CONTAINERS_CONF" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[engine]
runtime = "runc"
EOF

WORK="$(mktemp -d /tmp/orthoserve-image-check.XXXXXX)"
NAME="orthoserve-image-check-$$"
PROMETHEUS_PID=""
cleanup() {
    local rc=$?
    if [ "$KEEP" = 1 ]; then
        log "kept: container $NAME, Prometheus pid ${PROMETHEUS_PID:-none}, files in $WORK"
        return $rc
    fi
    if [ -n "$PROMETHEUS_PID" ]; then kill "$PROMETHEUS_PID" 2>/dev/null || true; fi
    if podman container exists "$NAME" 2>/dev/null; then
        if [ $rc -ne 0 ]; then
            log "last container log lines:"
            podman logs --tail 60 "$NAME" >&2 || true
        fi
        podman rm -f -t 10 "$NAME" >/dev/null || true
    fi
    rm -rf "$WORK"
    if [ $rc -ne 0 ]; then echo "[image-check] FAILED at step: $STEP (exit $rc)" >&2; fi
    return $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

seconds_since() { echo $(($(date +%s) - $1)); }

# --- 1. base images --------------------------------------------------------------------------------

debian_mirror() {
    local mirror
    mirror="$(grep -h -m1 -E '^URIs:.*/debian/?$' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}')" || true
    if [ -z "$mirror" ]; then
        mirror="$(grep -h -m1 -E '^deb .*/debian/? bookworm' /etc/apt/sources.list 2>/dev/null | awk '{print $2}')" || true
    fi
    echo "${mirror:-http://deb.debian.org/debian}"
}

step "base image $DEBIAN_IMAGE"
base_start=$(date +%s)
if podman image exists "$DEBIAN_IMAGE"; then
    log "reusing $DEBIAN_IMAGE from Podman's storage"
else
    tarball="$CACHE/debian-bookworm-minbase.tar"
    if [ ! -s "$tarball" ]; then
        mirror="$(debian_mirror)"
        log "debootstrap --variant=minbase bookworm from $mirror (about a minute)"
        rootfs="$WORK/rootfs"
        debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
            || { tail -20 "$WORK/debootstrap.log" >&2; fail "debootstrap"; }
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        tar -C "$rootfs" -cf "$tarball.partial" . && mv "$tarball.partial" "$tarball"
        rm -rf "$rootfs"
    fi
    podman import --quiet --change 'CMD ["/bin/bash"]' "$tarball" "$DEBIAN_IMAGE" >/dev/null
fi

BUILD_BASE=$DEBIAN_IMAGE
if [ "$MODE" = cpu ]; then
    step "base image $PYTHON_IMAGE (stand-in for python:3.11-slim-bookworm)"
    if podman image exists "$PYTHON_IMAGE"; then
        log "reusing $PYTHON_IMAGE from Podman's storage"
    else
        # Debian's python3 is 3.11, as in the upstream image; a venv first on PATH gives the plain
        # `python`/`pip` the upstream image has (Debian refuses a system-wide pip install, PEP 668).
        mkdir -p "$WORK/standin"
        cat >"$WORK/standin/Containerfile" <<EOF
FROM $DEBIAN_IMAGE
RUN apt-get update \\
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \\
    && rm -rf /var/lib/apt/lists/* \\
    && python3 -m venv /usr/local/python
ENV PATH=/usr/local/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    LANG=C.UTF-8
CMD ["python3"]
EOF
        podman build -q -t "$PYTHON_IMAGE" "$WORK/standin" >/dev/null
    fi
    podman run --rm --network=none "$PYTHON_IMAGE" python -c 'import sys, venv; assert sys.version_info[:2] == (3, 11), sys.version'
    BUILD_BASE=$PYTHON_IMAGE
fi
BASE_S=$(seconds_since "$base_start")

# --- 2. build --------------------------------------------------------------------------------------

# The host's pip settings (indexes, local wheel folders, constraints, CA bundle) go into a pip.conf
# that only the build reads (the Dockerfile's PIP_CONFIG_FILE). It and every local file or folder it
# names are mounted read-only under /dev: a tmpfs in every build container, so no mount point is left
# in a layer (Buildah leaves an empty one behind for a mount target the image lacks).
BUILD_HOST=/dev/build-host
step "build-time pip configuration, from the host's"
BUILD_ARGS=(--build-arg "BASE_IMAGE=$BUILD_BASE" --build-arg "PIP_CONFIG_FILE=$BUILD_HOST/pip.conf")
BUILD_MOUNTS=(-v "$WORK/pip.conf:$BUILD_HOST/pip.conf:ro")
"$PY" - "$WORK" "$BUILD_HOST" "$MODE" <<'EOF'
import subprocess, sys
from pathlib import Path
from urllib.parse import urlsplit

work, build_host, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True)
values = {}
# `pip config list` prints the files' settings first and PIP_* variables (":env:") last; later wins, as in pip.
for line in listed.stdout.splitlines():
    key, _, value = line.partition("=")
    section, _, name = key.rpartition(".")
    if section in {"global", "install", ":env:"}:
        values[name] = value.strip().strip("'\"")
if mode == "cuda":
    # The host's wheel folders hold PyTorch's CPU build, which pip would prefer to the CUDA one.
    values = {name: value for name, value in values.items() if name == "cert"}

mounts = set()

def in_build(location: str, index: bool) -> str | None:
    """Where the build sees a location: local ones mounted (None if missing), remote ones as they are."""
    is_url = location.startswith("file://")
    path = urlsplit(location).path if is_url else location
    if not path.startswith("/"):
        return location
    if not Path(path).exists():
        return None
    # A local "simple" index links its files as ../../files/...: mount the folder above it.
    mounts.add(str(Path(path).parent) if index and Path(path).name == "simple" else path)
    return f"file://{build_host}{path}" if is_url else f"{build_host}{path}"

conf = ["[global]", f"cert = {in_build(values.get('cert', '/etc/ssl/certs/ca-certificates.crt'), False)}"]
for name in ("find-links", "constraint", "index-url"):
    kept = [v for v in (in_build(v, name == "index-url") for v in values.get(name, "").split()) if v]
    if kept:
        conf.append(f"{name} = {' '.join(kept)}")
extra = [v for v in (in_build(v, True) for v in values.get("extra-index-url", "").split()) if v]
(work / "pip.conf").write_text("\n".join(conf) + "\n")
(work / "pip-mounts").write_text("".join(f"{m}\n" for m in sorted(mounts)))
(work / "pip-extra-index").write_text(" ".join(extra))
EOF
grep -q "^cert = $BUILD_HOST/" "$WORK/pip.conf" || fail "no CA bundle for the build's pip: $(cat "$WORK/pip.conf")"
while read -r path; do BUILD_MOUNTS+=(-v "$path:$BUILD_HOST$path:ro"); done <"$WORK/pip-mounts"
# The host's extra indexes replace the one the Dockerfile's PIP_EXTRA_INDEX_URL names (PyTorch's);
# a host without any keeps the Dockerfile's default.
if [ -s "$WORK/pip-extra-index" ]; then
    BUILD_ARGS+=(--build-arg "PIP_EXTRA_INDEX_URL=$(cat "$WORK/pip-extra-index")")
elif [ "$MODE" = cuda ]; then
    # PyTorch's CUDA index cannot be reached here: vLLM's torch pin comes from PyPI (a CUDA build too).
    BUILD_ARGS+=(--build-arg "PIP_EXTRA_INDEX_URL=https://pypi.org/simple")
fi
sed 's/^/[image-check]   build pip.conf: /' "$WORK/pip.conf" >&2
printf '[image-check]   mounted read-only under %s: %s\n' "$BUILD_HOST" "$(tr '\n' ' ' <"$WORK/pip-mounts")" >&2

step "podman build -f docker/Dockerfile.$MODE -t $TAG"
build_start=$(date +%s)
previous_id="$(podman image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)"
# Docker's image format: the OCI format has no HEALTHCHECK, and Podman would drop it.
podman build --format docker --layers -f "$CONTEXT/docker/Dockerfile.$MODE" -t "$TAG" "${BUILD_ARGS[@]}" "${BUILD_MOUNTS[@]}" "$CONTEXT" \
    >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log" >&2; fail "podman build"; }
BUILD_S=$(seconds_since "$build_start")
# The replaced image's layers (a rebuild after a source change) would pile up run after run.
if [ -n "$previous_id" ] && [ "$previous_id" != "$(podman image inspect --format '{{.Id}}' "$TAG")" ]; then
    podman image prune -f >/dev/null
fi
IMAGE_BYTES=$(podman image inspect --format '{{.Size}}' "$TAG")
log "built in ${BUILD_S}s, $((IMAGE_BYTES / 1000000)) MB"

# --- 3. hygiene ------------------------------------------------------------------------------------

# Short-lived containers of the image go without its health check: Podman times health checks with
# systemd, which these machines lack (it logs an error per container). The server's container keeps
# it, and the check runs it by hand (`podman healthcheck run`).
RUN_IMAGE=(--rm --network=none --no-healthcheck)

step "image hygiene: user, no compilers, no build-time CA or pip configuration, the model baked in"
image_user="$(podman image inspect --format '{{.Config.User}}' "$TAG")"
[ "$image_user" = "$IMAGE_UID:$IMAGE_UID" ] || fail "image user is '$image_user', expected $IMAGE_UID:$IMAGE_UID"
podman run "${RUN_IMAGE[@]}" --user 0 --entrypoint /bin/sh \
    -e BUILD_HOST="$BUILD_HOST" -e MODE="$MODE" "$TAG" -c '
    problems=0
    if [ "$MODE" = cuda ]; then
        # The CUDA image keeps gcc on purpose: Triton compiles its launchers at run time.
        command -v gcc >/dev/null || { echo "no gcc in the CUDA image, which Triton needs"; problems=1; }
    else
        for compiler in gcc cc c++ g++ clang tcc; do
            if command -v "$compiler" >/dev/null; then echo "compiler in the image: $(command -v "$compiler")"; problems=1; fi
        done
        for found in /usr/bin/*-gcc /usr/bin/*-gcc-[0-9]* /usr/lib/gcc/*/*/cc1; do
            if [ -e "$found" ]; then echo "compiler in the image: $found"; problems=1; fi
        done
    fi
    for leftover in "$BUILD_HOST" /etc/pip.conf /etc/xdg/pip/pip.conf /root/.config/pip /root/.pip "$VENV/pip.conf"; do
        if [ -e "$leftover" ]; then echo "build-time file left in the image: $leftover"; problems=1; fi
    done
    # PIP_NO_CACHE_DIR and PIP_DISABLE_PIP_VERSION_CHECK come from the Dockerfile ENV; nothing else may be set.
    settings="$(python -m pip config list | grep -v -x -e ":env:.no-cache-dir=.1." -e ":env:.disable-pip-version-check=.1.")"
    if [ -n "$settings" ]; then echo "pip configuration in the image: $settings"; problems=1; fi
    for file in /cache/models/SmolLM2-135M-Instruct/config.json /cache/models/SmolLM2-135M-Instruct/model.safetensors; do
        if [ ! -s "$file" ]; then echo "default model not baked in: $file missing"; problems=1; fi
    done
    exit $problems' || fail "image hygiene"

if [ "$MODE" = cuda ]; then
    step "the CUDA image against the CPU image: command, user, health check, settings, volumes"
    podman image exists "$CPU_TAG" || fail "$CPU_TAG is missing: run scripts/image-check.sh first"
    podman image inspect "$CPU_TAG" >"$WORK/cpu.json"
    podman image inspect "$TAG" >"$WORK/cuda.json"
    "$PY" - "$WORK/cpu.json" "$WORK/cuda.json" <<'EOF' || fail "the images differ"
import json, sys

cpu_image, cuda_image = (json.load(open(path))[0] for path in sys.argv[1:])
cpu, cuda = cpu_image["Config"], cuda_image["Config"]
problems = []
for key in ("Cmd", "Entrypoint", "User", "WorkingDir", "ExposedPorts", "Volumes"):
    if cpu.get(key) != cuda.get(key):
        problems.append(f"{key}: {cpu.get(key)!r} (cpu) != {cuda.get(key)!r} (cuda)")
if not cpu_image.get("Healthcheck") or cpu_image["Healthcheck"] != cuda_image.get("Healthcheck"):
    problems.append(f"health check: {cpu_image.get('Healthcheck')!r} (cpu) != {cuda_image.get('Healthcheck')!r} (cuda)")
env_cpu, env_cuda = (dict(e.split("=", 1) for e in config["Env"]) for config in (cpu, cuda))
for name in sorted(set(env_cpu) | set(env_cuda)):
    if name.startswith(("ORTHOSERVE_", "HF_", "VLLM_")) or name in {"VENV", "PYTHONUNBUFFERED"}:
        if env_cpu.get(name) != env_cuda.get(name):
            problems.append(f"env {name}: {env_cpu.get(name)!r} (cpu) != {env_cuda.get(name)!r} (cuda)")
# The rest of PATH is the base image's own.
venv_bin = env_cpu["VENV"] + "/bin:"
if not (env_cpu["PATH"].startswith(venv_bin) and env_cuda["PATH"].startswith(venv_bin)):
    problems.append(f"PATH does not start with the venv: {env_cpu['PATH']!r} (cpu), {env_cuda['PATH']!r} (cuda)")
print("\n".join(problems) or "same command, user, health check, settings and volumes")
sys.exit(bool(problems))
EOF
    step "the CUDA image's venv: vLLM's CUDA build, the CLI"
    podman run "${RUN_IMAGE[@]}" "$TAG" python -c '
import torch, transformers, vllm
assert torch.version.cuda, f"torch {torch.__version__} is not a CUDA build"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), vllm {vllm.__version__}, transformers {transformers.__version__}")
' || fail "imports in the CUDA image"
    podman run "${RUN_IMAGE[@]}" "$TAG" orthoserve serve --help >/dev/null || fail "orthoserve serve --help"
    echo "image-check: OK (CUDA stand-in: built and inspected, not run)"
    echo "image-check: image $TAG: $(awk '{printf "%.2f GB", $1/1e9}' <<<"$IMAGE_BYTES"), build ${BUILD_S}s"
    exit 0
fi

# --- 4. run ----------------------------------------------------------------------------------------

SETS="$WORK/adapter-sets"
# The base model's SVD factors (all projections, computed on first use: minutes on a small CPU) are
# kept between runs, as an operator's /cache volume keeps them; the server verifies them on use.
SVD="$CACHE/svd"
mkdir -p "$SETS" "$SVD"
chown "$IMAGE_UID:$IMAGE_UID" "$SETS" "$SVD"

# Small sets (two projections per layer) are quick to make and to load.
TARGETS=q_proj,v_proj
step "adapter set 'csr' (MoORE on $TARGETS, tasks arc-e,boolq) made by the image's CLI, into the sets volume"
podman run "${RUN_IMAGE[@]}" -v "$SETS:/adapter-sets" -v "$SVD:/cache/svd" "$TAG" \
    orthoserve adapters init moore --base-model "$MODEL_DIR" --tasks arc-e,boolq --targets "$TARGETS" \
    --out /adapter-sets/csr --cache-dir /cache/svd >"$WORK/init-csr.log" 2>&1 || { tail -20 "$WORK/init-csr.log" >&2; fail "adapters init"; }
[ -s "$SETS/csr/manifest.json" ] || fail "no manifest.json in the new set"

# --network=none: the container has only its loopback, so it must serve from what the image holds.
# The host-side clients (the openai client, Prometheus) join that network namespace with nsenter.
step "podman run --network=none (user $IMAGE_UID, sets volume) and wait for /health"
start_start=$(date +%s)
podman run -d --name "$NAME" --network=none --shm-size 2g \
    -v "$SETS:/adapter-sets" -v "$SVD:/cache/svd" \
    -e ORTHOSERVE_ADMIN_TOKEN="$ADMIN_TOKEN" \
    "$TAG" >/dev/null
CONTAINER_PID="$(podman inspect --format '{{.State.Pid}}' "$NAME")"
[ "$CONTAINER_PID" -gt 0 ] || fail "container $NAME has no process"
in_container_net() { nsenter --net="/proc/$CONTAINER_PID/ns/net" "$@"; }
URL=http://127.0.0.1:8000
in_container_net "$PY" - "$URL" "$HEALTH_TIMEOUT_S" "$NAME" <<'EOF' || fail "/health"
import subprocess, sys, time
import httpx

url, timeout_s, name = sys.argv[1], float(sys.argv[2]), sys.argv[3]
deadline = time.monotonic() + timeout_s
while time.monotonic() < deadline:
    running = subprocess.run(["podman", "inspect", "--format", "{{.State.Running}}", name],
                             capture_output=True, text=True).stdout.strip()
    if running != "true":
        sys.exit(f"the container stopped before /health answered")
    try:
        if httpx.get(f"{url}/health", timeout=5).status_code == 200:
            sys.exit(0)
    except httpx.TransportError:
        pass
    time.sleep(1)
sys.exit(f"/health did not answer 200 within {timeout_s:.0f}s")
EOF
START_S=$(seconds_since "$start_start")
log "/health answered ${START_S}s after podman run"
[ "$(podman exec "$NAME" id -u)" = "$IMAGE_UID" ] || fail "the server does not run as uid $IMAGE_UID"
step "the image's HEALTHCHECK passes in the running container"
podman healthcheck run "$NAME" || fail "podman healthcheck run: the image's health check fails or is missing"

# --- 5-7. API, admin API, metrics, Prometheus ------------------------------------------------------

step "openai client: chat with the base model and with task csr/boolq"
in_container_net "$PY" "$ROOT/scripts/image_check_client.py" chat --url "$URL" --set csr --task boolq \
    || fail "chat requests"

step "admin API: make set 'mtl' in the running container, load it with POST /v1/adapter-sets, chat with mtl/piqa"
podman exec "$NAME" orthoserve adapters init moore --base-model "$MODEL_DIR" --tasks piqa,winogrande \
    --targets "$TARGETS" --out /adapter-sets/mtl --cache-dir /cache/svd >"$WORK/init-mtl.log" 2>&1 \
    || { tail -20 "$WORK/init-mtl.log" >&2; fail "adapters init in the container"; }
in_container_net "$PY" "$ROOT/scripts/image_check_client.py" load --url "$URL" --token "$ADMIN_TOKEN" \
    --set mtl --path /adapter-sets/mtl --task piqa || fail "admin API load"

step "/metrics holds orthoserve series"
in_container_net "$PY" "$ROOT/scripts/image_check_client.py" metrics --url "$URL" --set csr --task boolq \
    || fail "/metrics"

step "Prometheus (config from docker/prometheus.yml) scrapes the container; per-task histogram via its query API"
mkdir -p "$WORK/prometheus"
"$PY" - "$ROOT/docker/prometheus.yml" "$WORK/prometheus/prometheus.yml" <<'EOF'
import sys
import yaml

source, target = sys.argv[1:]
config = yaml.safe_load(open(source))
config["global"]["scrape_interval"] = "1s"
rewritten = 0
for job in config["scrape_configs"]:
    for static in job.get("static_configs", []):
        # The compose service name becomes the container's loopback, where Prometheus runs beside it.
        new = [t.replace("orthoserve:", "127.0.0.1:") for t in static["targets"]]
        rewritten += new != static["targets"]
        static["targets"] = new
assert rewritten >= 1, "no orthoserve target in docker/prometheus.yml"
yaml.safe_dump(config, open(target, "w"))
EOF
promtool check config "$WORK/prometheus/prometheus.yml" >/dev/null || fail "promtool rejects the derived config"
nsenter --net="/proc/$CONTAINER_PID/ns/net" prometheus \
    --config.file="$WORK/prometheus/prometheus.yml" --storage.tsdb.path="$WORK/prometheus/data" \
    --web.listen-address=127.0.0.1:9090 >"$WORK/prometheus/log" 2>&1 &
PROMETHEUS_PID=$!
in_container_net "$PY" "$ROOT/scripts/image_check_client.py" prometheus --url "$URL" \
    --prometheus http://127.0.0.1:9090 --set mtl --task winogrande \
    || { tail -20 "$WORK/prometheus/log" >&2; fail "Prometheus"; }
kill -0 "$PROMETHEUS_PID" 2>/dev/null || fail "Prometheus exited"

# --- 8. report -------------------------------------------------------------------------------------

STEP="report"
echo "image-check: OK"
echo "image-check: image $TAG: $(awk '{printf "%.2f GB (%.0f bytes)", $1/1e9, $1}' <<<"$IMAGE_BYTES")"
echo "image-check: base images ready in ${BASE_S}s, image build ${BUILD_S}s, podman run to /health ${START_S}s, whole check $(($(date +%s) - CHECK_START))s"
