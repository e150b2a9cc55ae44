from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from civiscore.workspace import Workspace


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    """A fresh civiscore home with the demo rulebook published."""
    workspace, _ = Workspace.init(tmp_path / "home")
    yield workspace
    workspace.close()
