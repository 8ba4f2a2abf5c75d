"""The CPU and CUDA Dockerfiles, parsed and compared: both images must start the same server, as the
same user, with the same health check, settings and volumes; they differ only where the hardware does
(base image, vLLM build, compilers for Triton, the allocator).

scripts/image-check.sh builds and runs the CPU image; this comparison is what carries that check over
to the CUDA image, which no machine here can run.
"""

import json

import pytest
from docker_support import DOCKER, Dockerfile

CPU = Dockerfile(DOCKER / "Dockerfile.cpu")
CUDA = Dockerfile(DOCKER / "Dockerfile.cuda")
COMPILERS = {"gcc", "g++", "clang", "cc", "build-essential", "cpp"}
# Environment only one image needs: tcmalloc is preloaded on CPU; Triton's kernel cache on GPUs.
ENV_ONLY_CPU = {"LD_PRELOAD"}
ENV_ONLY_CUDA = {"TRITON_CACHE_DIR"}


@pytest.mark.parametrize(
    ("dockerfile", "default_base"),
    [(CPU, "python:3.11-slim-bookworm"), (CUDA, "nvidia/cuda:13.0.1-base-ubuntu24.04")],
    ids=["cpu", "cuda"],
)
def test_base_image_is_a_build_argument(dockerfile: Dockerfile, default_base: str) -> None:
    assert "BASE_IMAGE" in dockerfile.global_args, f"{dockerfile.path.name}: no ARG BASE_IMAGE before FROM"
    assert dockerfile.base == "${BASE_IMAGE}"
    assert dockerfile.default_base() == default_base


def test_same_command_user_and_entrypoint() -> None:
    assert json.loads(CPU.last("CMD")) == json.loads(CUDA.last("CMD")) == ["orthoserve", "serve"]
    assert CPU.last("ENTRYPOINT") == CUDA.last("ENTRYPOINT")
    assert CPU.last("USER") == CUDA.last("USER")
    assert CPU.last("USER").split(":")[0] not in {"root", "0"}
    assert CPU.last("WORKDIR") == CUDA.last("WORKDIR")


def test_same_user_account_and_folders() -> None:
    """The RUN that bakes in the model and creates the user (whose uid USER names) is the same."""
    (cpu_user_run,) = [run for run in CPU.all("RUN") if "useradd" in run]
    (cuda_user_run,) = [run for run in CUDA.all("RUN") if "useradd" in run]
    assert cpu_user_run == cuda_user_run
    uid = CPU.last("USER").split(":")[0]
    assert f"--uid {uid}" in cpu_user_run


def test_same_health_check() -> None:
    cpu_options, cpu_probe = CPU.healthcheck()
    cuda_options, cuda_probe = CUDA.healthcheck()
    assert cpu_options == cuda_options
    assert cpu_probe == cuda_probe
    assert "/health" in cpu_probe and "${ORTHOSERVE_PORT}" in cpu_probe


def test_same_settings_and_volumes() -> None:
    cpu_env, cuda_env = CPU.env(), CUDA.env()
    assert set(cpu_env) - set(cuda_env) == ENV_ONLY_CPU
    assert set(cuda_env) - set(cpu_env) == ENV_ONLY_CUDA
    for name in set(cpu_env) & set(cuda_env):
        assert cpu_env[name] == cuda_env[name], f"{name}: {cpu_env[name]!r} (cpu) != {cuda_env[name]!r} (cuda)"
    orthoserve = {name for name in cpu_env if name.startswith("ORTHOSERVE_")}
    assert {"ORTHOSERVE_HOST", "ORTHOSERVE_PORT", "ORTHOSERVE_ADAPTER_SETS", "ORTHOSERVE_ADAPTER_ROOTS"} <= orthoserve
    assert json.loads(CPU.last("VOLUME")) == json.loads(CUDA.last("VOLUME"))
    assert CPU.last("EXPOSE") == CUDA.last("EXPOSE") == cpu_env["ORTHOSERVE_PORT"]


def test_same_sources_and_install_script() -> None:
    assert CPU.all("COPY") == CUDA.all("COPY")
    cpu_installs = [run for run in CPU.all("RUN") if "scripts/install.sh" in run]
    cuda_installs = [run for run in CUDA.all("RUN") if "scripts/install.sh" in run]
    assert cpu_installs == ["scripts/install.sh cpu"]
    assert cuda_installs == ["scripts/install.sh cuda"]


def test_only_the_cuda_image_has_compilers() -> None:
    """Triton compiles its launchers at run time on GPUs; the CPU image runs eagerly and needs none."""
    assert not CPU.apt_packages() & COMPILERS, CPU.apt_packages()
    assert "gcc" in CUDA.apt_packages()
