"""Whether the Spark engine can run here, told without importing pyspark or starting Spark.

The CLI asks before it touches Spark, so that a missing piece is one clear sentence instead of
an ``ImportError`` or a Java gateway's stack trace; the test suite asks the same question to
skip (or, in CI, fail) its Spark tests.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from importlib.util import find_spec
from pathlib import Path

__all__ = ["INSTALL_HINT", "MIN_JAVA", "java_command", "java_major", "why_no_spark"]

INSTALL_HINT = "install the spark extra: pip install 'civiscore[spark]'"
MIN_JAVA = 17
"""Spark 4 runs on Java 17 or later."""

_JAVA_HINT = (
    f"Spark needs Java {MIN_JAVA} or later on PATH or in JAVA_HOME "
    "(on Debian: apt-get install openjdk-17-jre-headless)"
)


def why_no_spark() -> str | None:
    """What keeps the Spark engine from running here, or None when nothing does."""
    missing = [module for module in ("pyspark", "sqlglot") if find_spec(module) is None]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        return f"{' and '.join(missing)} {verb} not installed; {INSTALL_HINT}"
    java = java_command()
    if java is None:
        home = os.environ.get("JAVA_HOME")
        where = f"JAVA_HOME={home} has no bin/java" if home else "no java on PATH"
        return f"no Java runtime ({where}); {_JAVA_HINT}"
    major = java_major(java)
    if major is None:
        return f"{java} -version did not run or said no version; {_JAVA_HINT}"
    if major < MIN_JAVA:
        return f"{java} is Java {major}; {_JAVA_HINT}"
    return None


def java_command() -> str | None:
    """The java binary Spark's launcher would run: ``$JAVA_HOME/bin/java``, else PATH's."""
    home = os.environ.get("JAVA_HOME")
    if home:
        # spark-class uses JAVA_HOME whenever it is set, even when it points nowhere.
        java = Path(home, "bin", "java")
        return str(java) if java.exists() else None
    return shutil.which("java")


def java_major(java: str) -> int | None:
    """The major version of a java binary (``java -version``), or None if it cannot tell."""
    try:
        done = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_java_version(done.stderr + done.stdout)


def parse_java_version(text: str) -> int | None:
    """The major version in ``java -version``'s banner.

    >>> parse_java_version('openjdk version "17.0.15" 2025-04-15')
    17
    >>> parse_java_version('java version "1.8.0_392"')
    8
    >>> parse_java_version('openjdk version "21-ea" 2023-09-19'), parse_java_version("no java")
    (21, None)
    """
    found = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if found is None:
        return None
    major = int(found.group(1))
    # Before Java 9 the banner said "1.8" for Java 8.
    return int(found.group(2)) if major == 1 and found.group(2) else major
