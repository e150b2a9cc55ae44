"""What happens when the Spark engine cannot run: the CLI's message, the suite's skip or failure.

None of these tests starts Spark, so they run everywhere, with or without pyspark and Java.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from civiscore.cli import app
from civiscore.engine import spark_runtime
from civiscore.engine.spark_runtime import INSTALL_HINT, why_no_spark
from tests import utils

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner(env={"CIVISCORE_HOME": None, "CIVISCORE_KEY_FILE": None, "COLUMNS": "300"})


def _fake_java(folder: Path, banner: str) -> Path:
    """A ``java`` that prints a version banner on stderr, as the real one does."""
    java = folder / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text(f"#!/bin/sh\necho '{banner}' >&2\n")
    java.chmod(java.stat().st_mode | stat.S_IXUSR)
    return java


@pytest.fixture
def home(tmp_path: Path) -> Path:
    result = runner.invoke(app, ["--home", str(tmp_path / "home"), "init"])
    assert result.exit_code == 0, result.stderr
    return tmp_path / "home"


def test_missing_pyspark_is_named_with_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spark_runtime, "find_spec", lambda name: None)
    assert why_no_spark() == f"pyspark and sqlglot are not installed; {INSTALL_HINT}"


def test_java_home_without_java(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(spark_runtime, "find_spec", lambda name: object())
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    problem = why_no_spark()
    assert problem is not None
    assert problem.startswith(f"no Java runtime (JAVA_HOME={tmp_path} has no bin/java)")
    assert "Java 17 or later" in problem


def test_no_java_on_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(spark_runtime, "find_spec", lambda name: object())
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert (why_no_spark() or "").startswith("no Java runtime (no java on PATH)")


def test_old_java_refused_and_new_java_accepted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(spark_runtime, "find_spec", lambda name: object())
    old = _fake_java(tmp_path / "jdk8", 'java version "1.8.0_392"')
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "jdk8"))
    assert (why_no_spark() or "").startswith(f"{old} is Java 8; Spark needs Java 17 or later")
    _fake_java(tmp_path / "jdk21", 'openjdk version "21.0.4" 2024-07-16')
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "jdk21"))
    assert why_no_spark() is None


def test_cli_says_how_to_install_the_extra(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spark_runtime, "find_spec", lambda name: None)
    result = runner.invoke(app, ["--home", str(home), "score", "--engine", "spark"])
    assert result.exit_code == 2
    message = " ".join(result.stderr.split())
    assert "the Spark engine cannot run here: pyspark and sqlglot are not installed" in message
    assert "install the spark extra: pip install 'civiscore[spark]'" in message
    assert "snapshot" not in result.stdout


def test_cli_says_java_is_missing(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spark_runtime, "find_spec", lambda name: object())
    env = {"JAVA_HOME": str(tmp_path / "no-jdk")}
    result = runner.invoke(app, ["--home", str(home), "score", "--engine", "spark"], env=env)
    assert result.exit_code == 2
    message = " ".join(result.stderr.split())
    assert f"no Java runtime (JAVA_HOME={tmp_path / 'no-jdk'} has no bin/java)" in message


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--engine", "spark", "--incremental"], "--incremental runs on the DuckDB engine"),
        (["--master", "local[2]"], "--master and --parquet are for --engine spark"),
        (["--parquet", "x"], "--master and --parquet are for --engine spark"),
    ],
)
def test_cli_refuses_options_that_do_not_go_together(
    home: Path, args: list[str], message: str
) -> None:
    result = runner.invoke(app, ["--home", str(home), "score", *args])
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split())


@pytest.mark.parametrize("required", [True, False])
def test_spark_tests_fail_in_ci_and_skip_elsewhere(
    monkeypatch: pytest.MonkeyPatch, required: bool
) -> None:
    monkeypatch.setattr(utils, "spark_problem", lambda: "no Java runtime")
    if required:
        monkeypatch.setenv("CIVISCORE_REQUIRE_SPARK", "1")
        with pytest.raises(pytest.fail.Exception, match="CIVISCORE_REQUIRE_SPARK=1 and the"):
            utils.require_spark()
    else:
        monkeypatch.delenv("CIVISCORE_REQUIRE_SPARK", raising=False)
        with pytest.raises(pytest.skip.Exception, match="cannot run here: no Java runtime"):
            utils.require_spark()


def test_ci_requires_every_optional_backend() -> None:
    """CI must run the tests that skip elsewhere: each is required by a variable it exports."""
    ci = (ROOT / ".ci" / "run").read_text()
    for variable in ("POSTGRES", "BROWSER", "SPARK"):
        assert f"export CIVISCORE_REQUIRE_{variable}=1" in ci, variable


def test_doctests() -> None:
    import doctest

    result = doctest.testmod(spark_runtime)
    assert result.attempted > 0 and result.failed == 0
