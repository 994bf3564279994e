"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

Every service's command must parse with the real `cellgap` parser (environment placeholders
replaced by dummy values), required variables must say what to set, and every file the build
refers to must exist.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from cellgap.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
PLACEHOLDER = re.compile(r"\$\{(?P<name>[A-Z_][A-Z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|\$(?P<bare>[A-Z_][A-Z0-9_]*)")
DUMMIES = {"DATASET": "synthetic:8", "ENCODER": "convnext_atto", "STORE": "sample.zarr", "RUN": "sample-run"}


def substitute(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, $VAR."""

    def replace(match: re.Match) -> str:
        name = match.group("name") or match.group("bare")
        if name in env:
            return env[name]
        if match.group("op") in (":-", "-"):
            return match.group("arg")
        if match.group("op") in (":?", "?"):
            return DUMMIES.get(name, "dummy")
        return ""

    return PLACEHOLDER.sub(replace, text)


def load(path: Path, env: dict[str, str] | None = None) -> dict:
    return yaml.safe_load(substitute(path.read_text(), env or {}))


@pytest.fixture(scope="module")
def compose() -> dict:
    return load(ROOT / "docker-compose.yml")


def test_every_cellgap_command_parses_with_the_real_parser(compose):
    parser = build_parser()
    parsed = {}
    for name, service in compose["services"].items():
        entrypoint = service.get("entrypoint")
        command = [str(part) for part in service["command"]]
        if entrypoint is None:  # the image's entrypoint: cellgap
            try:
                parsed[name] = parser.parse_args(command)
            except SystemExit:
                pytest.fail(f"service {name!r}: `cellgap {' '.join(command)}` does not parse")
        else:
            assert entrypoint[:1] == ["dask"] and entrypoint[1] in ("scheduler", "worker"), name
            assert _has_dask(), "the dask services need the distributed package (a cellgap dependency)"
    assert parsed["extract"].command == "extract" and parsed["extract"].store == "/stores/sample.zarr"
    assert parsed["train"].command == "train" and str(parsed["train"].out) == "/runs/sample-run"
    assert parsed["api"].command == "serve" and str(parsed["api"].run) == "/runs/sample-run"
    assert parsed["api"].host == "0.0.0.0" and parsed["api"].port == 8000
    assert parsed["extract-distributed"].scheduler == "tcp://scheduler:8786"


def _has_dask() -> bool:
    import importlib.util

    return importlib.util.find_spec("distributed") is not None


def test_services_profiles_and_healthcheck(compose):
    services = compose["services"]
    assert services["extract"]["profiles"] == ["extract"] and services["train"]["profiles"] == ["train"]
    assert "profiles" not in services["api"]
    assert {services[s]["profiles"][0] for s in ("scheduler", "worker", "extract-distributed")} == {"distributed"}
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    for name in ("extract", "train", "api", "worker"):
        mounts = {volume.split(":")[1] for volume in services[name]["volumes"]}
        assert {"/data", "/stores", "/runs"} <= mounts, name


def test_required_variables_explain_themselves():
    text = (ROOT / "docker-compose.yml").read_text()
    required = [m for m in PLACEHOLDER.finditer(text) if m.group("op") in (":?", "?")]
    assert {m.group("name") for m in required} >= {"DATASET", "ENCODER", "STORE", "RUN"}
    for match in required:
        assert len(match.group("arg").strip()) > 10, f"${{{match.group('name')}}} needs a message saying what to set"


def read_env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line.strip() and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def test_the_sample_env_file_sets_every_required_variable_and_parses():
    """Compose interpolates the whole file on every command: the env file must satisfy all of it."""
    env = read_env_file(ROOT / "docker" / "sample.env")
    text = (ROOT / "docker-compose.yml").read_text()
    required = {m.group("name") for m in PLACEHOLDER.finditer(text) if m.group("op") in (":?", "?")}
    assert required <= set(env)
    compose = load(ROOT / "docker-compose.yml", env)
    parser = build_parser()
    for name in ("extract", "train", "api", "extract-distributed"):
        parser.parse_args([str(part) for part in compose["services"][name]["command"]])
    extract = parser.parse_args([str(part) for part in compose["services"]["extract"]["command"]])
    assert extract.dataset == env["DATASET"] and extract.pretrained is False


def test_environment_values_override_defaults():
    compose = load(ROOT / "docker-compose.yml", {"RUN": "mine", "API_PORT": "9000", "EPOCHS": "3"})
    assert "/runs/mine" in compose["services"]["api"]["command"]
    assert compose["services"]["api"]["ports"] == ["9000:8000"]
    assert build_parser().parse_args([str(p) for p in compose["services"]["train"]["command"]]).epochs == 3


def test_every_referenced_file_exists(compose):
    for override in (ROOT / "docker" / "compose.gpu.yml",):
        assert override.is_file()
        for service in load(override)["services"].values():
            assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
    dockerfiles = set()
    for service in compose["services"].values():
        build = service["build"]
        context = ROOT / build["context"]
        assert context.is_dir()
        dockerfiles.add(context / build["dockerfile"])
    assert (ROOT / ".dockerignore").is_file()
    for dockerfile in dockerfiles:
        assert dockerfile.is_file()
        for line in dockerfile.read_text().splitlines():
            parts = line.split()
            if parts[:1] == ["COPY"] and not any(p.startswith("--from") for p in parts):
                for source in parts[1:-1]:
                    assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source} does not exist"


def test_dockerfile_installs_dependencies_before_the_source_and_runs_unprivileged():
    text = (ROOT / "docker" / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    first_source = next(i for i, line in enumerate(lines) if line.startswith("COPY") and "pyproject" not in line)
    dependencies = next(i for i, line in enumerate(lines) if "pip install" in line and "--no-deps" not in line)
    assert dependencies < first_source
    assert "ARG TORCH_INDEX=" in text  # the CUDA build argument
    user = next(line for line in lines if line.startswith("USER"))
    assert user.split()[1] not in ("root", "0")
    assert "HEALTHCHECK" in text and "/readyz" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
