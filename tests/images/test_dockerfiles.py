"""The Dockerfiles have the properties issue 7 asks for, checked by parsing them (there is no container engine here)."""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
IMAGES = {"Dockerfile.operator": "sluice-operator", "Dockerfile.runtime": "sluice"}
OCI_LABELS = {"title", "description", "source", "licenses", "version"}
COMPILER = re.compile(r"(?<![\w.-])(build-essential|gcc|g\+\+|clang|cc|c\+\+|make|cmake|[\w.+-]+-dev)(?![\w.+-])")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [value for key, value in self.instructions if key == keyword]


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) pairs, with comments dropped and continuation lines joined."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    assert not pending, "a continuation line runs off the end of the file"
    return result


def stages(path: Path) -> list[Stage]:
    global_args: dict[str, str] = {}
    found: list[Stage] = []
    for keyword, rest in instructions(path.read_text()):
        if keyword == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: global_args.get(m[1] or m[2], m[0]), words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            found.append(Stage(base, name))
        elif not found:
            if keyword == "ARG" and "=" in rest:
                key, _, value = rest.partition("=")
                global_args[key] = value
        else:
            found[-1].instructions.append((keyword, rest))
    return found


@pytest.fixture(params=sorted(IMAGES), ids=lambda name: name)
def dockerfile(request: pytest.FixtureRequest) -> tuple[str, list[Stage]]:
    return request.param, stages(ROOT / request.param)


def test_multi_stage_on_slim_python(dockerfile: tuple[str, list[Stage]]) -> None:
    _, parsed = dockerfile
    assert len(parsed) >= 2, "expected a build stage and a final stage"
    for stage in parsed:
        assert re.fullmatch(r"python:3\.\d+-slim(-\w+)?", stage.base), stage.base
    final = parsed[-1]
    builders = {stage.name for stage in parsed[:-1]}
    copied = [re.search(r"--from=(\S+)", args) for args in final.args("COPY")]
    assert any(match and match[1] in builders for match in copied), "the final stage copies nothing from a build stage"


def test_final_stage_runs_as_numeric_non_root_user(dockerfile: tuple[str, list[Stage]]) -> None:
    _, parsed = dockerfile
    users = parsed[-1].args("USER")
    assert users, "the final stage sets no USER"
    match = re.fullmatch(r"(\d+)(?::(\d+))?", users[-1])
    assert match, f"USER {users[-1]!r} is not numeric, so runAsNonRoot cannot verify it"
    assert int(match[1]) != 0 and (match[2] is None or int(match[2]) != 0)


def test_entrypoint_is_the_console_script(dockerfile: tuple[str, list[Stage]]) -> None:
    name, parsed = dockerfile
    entrypoints = parsed[-1].args("ENTRYPOINT")
    assert entrypoints, "the final stage has no ENTRYPOINT"
    argv = json.loads(entrypoints[-1])  # exec form, so signals reach the process
    assert argv[0] == IMAGES[name]
    assert argv[0] in SCRIPTS, f"{argv[0]} is not a console script of pyproject.toml"


def test_oci_labels(dockerfile: tuple[str, list[Stage]]) -> None:
    _, parsed = dockerfile
    labels = " ".join(parsed[-1].args("LABEL"))
    present = set(re.findall(r"org\.opencontainers\.image\.([a-z.]+)=", labels))
    assert present >= OCI_LABELS, f"missing OCI labels: {sorted(OCI_LABELS - present)}"


def build_tools(stage: Stage) -> list[str]:
    """Compilers and -dev packages that a stage installs with apt-get."""
    found: list[str] = []
    for run in stage.args("RUN"):
        for install in re.findall(r"apt-get install([^;&|]*)", run):
            found += [match[0] for match in COMPILER.finditer(install)]
    return found


def test_no_compilers_in_final_stage(dockerfile: tuple[str, list[Stage]]) -> None:
    _, parsed = dockerfile
    assert build_tools(parsed[-1]) == []


def test_the_compiler_check_sees_compilers(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM python:3.11-slim AS build\nRUN true\n"
        "FROM python:3.11-slim\n# a comment\nRUN apt-get update \\\n && apt-get install -y --no-install-recommends \\\n"
        "    gcc libleveldb-dev libleveldb1d && true\n"
    )
    assert build_tools(stages(bad)[-1]) == ["gcc", "libleveldb-dev"]


def test_runtime_image_carries_a_working_leveldb() -> None:
    final = stages(ROOT / "Dockerfile.runtime")[-1]
    runs = " ".join(final.args("RUN"))
    assert "import plyvel" in runs and "plyvel.DB(" in runs, "the runtime image does not prove that plyvel opens a DB"
    assert "libleveldb1d" in runs, "no fallback to the system LevelDB for a plyvel built from source"


def test_plyvel_wheel_bundles_leveldb() -> None:
    """The manylinux wheel pip picks on x86_64 brings its own libleveldb: the final stage needs no -dev package."""
    plyvel = pytest.importorskip("plyvel")
    libs = Path(plyvel.__file__).parent.parent / "plyvel.libs"
    if not libs.is_dir():
        pytest.skip("plyvel here was built from source, not from a manylinux wheel")
    assert any(lib.name.startswith("libleveldb") for lib in libs.iterdir())


def test_images_do_not_carry_the_other_package() -> None:
    operator_runs = " ".join(stages(ROOT / "Dockerfile.operator")[0].args("RUN"))
    runtime_runs = " ".join(stages(ROOT / "Dockerfile.runtime")[0].args("RUN"))
    assert "site-packages/sluice_runtime" in operator_runs and "/bin/sluice " in operator_runs + " "
    assert "site-packages/sluice_operator" in runtime_runs and "/bin/sluice-operator" in runtime_runs
