"""Run the Autobahn|Testsuite fuzzing client (groups 1-13) against triows' connection engine.

    nox -s autobahn                  # or: python -m tests.conformance.autobahn [--python2 PATH]
    nox -s autobahn -- --cases 12 13 # some groups only (or cases: 12.1.*)

The test suite (PyPI ``autobahntestsuite``) runs on Python 2.7 only. This script finds one
(``--python2``, else pyenv's 2.7.x, else ``python2.7`` on PATH), builds a virtualenv for it
under ``.autobahn/`` once, starts ``tests/conformance/echo_server.py`` on a free loopback
port, runs ``wstest -m fuzzingclient`` and reads its report. It exits non-zero when a case
FAILED or a close was not clean. NON-STRICT (a fail-fast case failed a little later than it
could have) and INFORMATIONAL are allowed. Groups 12 and 13 are permessage-deflate: the echo
server compresses every echo as it compresses a broadcast. The HTML report is in
``.autobahn/reports/``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / ".autobahn"
CASES = [f"{group}.*" for group in (*range(1, 11), 12, 13)]
GOOD_BEHAVIOR = {"OK", "NON-STRICT", "INFORMATIONAL"}
GOOD_CLOSE = {"OK", "INFORMATIONAL"}


def find_python2(explicit: str | None) -> str:
    if explicit:
        return explicit
    root = subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=False)
    candidates = sorted(glob.glob(f"{root.stdout.strip()}/versions/2.7*/bin/python"))
    if root.returncode == 0 and candidates:
        return candidates[-1]
    found = shutil.which("python2.7")
    if found:
        return found
    sys.exit("no Python 2.7 found: pass --python2 PATH (pyenv install 2.7.18 provides one)")


def wstest(python2: str) -> Path:
    """``wstest`` from a Python 2.7 virtualenv under .autobahn/, made on first use."""
    venv = WORK / "venv27"
    binary = venv / "bin" / "wstest"
    if binary.exists():
        return binary
    print(f"installing autobahntestsuite for {python2} into {venv} (once)", flush=True)
    has_virtualenv = subprocess.run([python2, "-m", "virtualenv", "--version"], check=False)
    if has_virtualenv.returncode != 0:
        # The last virtualenv release that still creates Python 2.7 environments.
        subprocess.run(
            [python2, "-m", "pip", "install", "--user", "-q", "virtualenv<20.22"], check=True
        )
    subprocess.run([python2, "-m", "virtualenv", "-q", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "autobahntestsuite"], check=True)
    return binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(python2: str, cases: list[str]) -> int:
    binary = wstest(python2)
    port = free_port()
    reports = WORK / "reports"
    shutil.rmtree(reports, ignore_errors=True)
    spec = WORK / "fuzzingclient.json"
    spec.write_text(
        json.dumps(
            {
                "outdir": str(reports),
                "servers": [{"agent": "triows", "url": f"ws://127.0.0.1:{port}"}],
                "cases": cases,
                "exclude-cases": [],
                "exclude-agent-cases": {},
            }
        )
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.conformance.echo_server", str(port)], cwd=ROOT
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        print(f"running Autobahn fuzzingclient, cases {' '.join(cases)}", flush=True)
        subprocess.run(
            [str(binary), "-m", "fuzzingclient", "-s", str(spec)],
            cwd=WORK,
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=5400,  # groups 12 and 13 alone take ~15 min on a busy machine
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
    return judge(reports / "index.json")


def judge(index: Path) -> int:
    results = json.loads(index.read_text())["triows"]
    behavior = Counter(case["behavior"] for case in results.values())
    close = Counter(case["behaviorClose"] for case in results.values())
    print(f"{len(results)} cases; behavior: {dict(behavior)}; close: {dict(close)}")
    bad = [
        f"{case_id}: {case['behavior']} / close {case['behaviorClose']}"
        for case_id, case in sorted(results.items())
        if case["behavior"] not in GOOD_BEHAVIOR or case["behaviorClose"] not in GOOD_CLOSE
    ]
    for line in bad:
        print("  " + line)
    print("PASS: 0 FAILED, every close clean" if not bad else f"FAIL: {len(bad)} case(s)")
    return 1 if bad else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python2", help="a Python 2.7 interpreter")
    parser.add_argument("--cases", nargs="+", help="groups (12) or case patterns (12.1.*)")
    args = parser.parse_args()
    cases = [c if "." in c else f"{c}.*" for c in args.cases] if args.cases else CASES
    WORK.mkdir(exist_ok=True)
    os.chdir(ROOT)
    sys.exit(run(find_python2(args.python2), cases))


if __name__ == "__main__":
    main()
