"""triows.js's own tests under Node's built-in runner (``node --test tests/js/``): the shared
tracker vectors (tests/vectors/tracking.json) and the client against a scripted server, in
virtual time. No packages and no bundler: only ``node`` (20 or later) on PATH."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

JS_TESTS = Path(__file__).resolve().parent / "js"


def test_triows_js_passes_its_node_tests() -> None:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have node (20 or later) on PATH for tests/js")
        pytest.skip("node is not installed: triows.js's tests (tests/js) need Node 20 or later")
    result = subprocess.run(
        [node, "--test", "--test-reporter=tap", str(JS_TESTS)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    failed = [line for line in result.stdout.splitlines() if line.startswith("not ok")]
    assert result.returncode == 0, "\n".join(failed) + "\n" + result.stdout[-4000:] + result.stderr
    assert "# pass" in result.stdout
