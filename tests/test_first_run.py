"""The README's first command on a fresh clone: `make run`, then the curl, then the document on disk."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

from tests.support.observe import http_ok
from tests.support.procs import ManagedProcess, free_port, wait_until

ROOT = Path(__file__).resolve().parents[1]
INSTALL_TIMEOUT = 900.0  # a fresh .venv is installed from the package registry


def post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        return dict(json.loads(response.read()))


def documents(out_dir: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(out_dir.glob("*.ndjson")) for line in path.read_text().splitlines()]


def test_make_run_on_a_fresh_clone_writes_the_posted_message(tmp_path: Path) -> None:
    clone = tmp_path / "sluice"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    listen = f"127.0.0.1:{free_port()}"
    run = ManagedProcess("make-run", ["make", "run", f"LISTEN={listen}"], tmp_path / "make-run.log", cwd=clone)
    run.start()
    try:
        run.wait_ready(lambda: http_ok(f"http://{listen}/readyz"), INSTALL_TIMEOUT)
        assert "curl -XPOST" in run.log_path.read_text(), "make run prints the curl command to try"

        answer = post_json(f"http://{listen}/rx/station-7/reading/wx", {"temperature": 21.5, "humidity": 40})
        assert answer["status"] == "OK"

        def written() -> bool:
            return any(doc["_id"] == answer["uuid"] for doc in documents(clone / ".sluice" / "out"))

        wait_until(written, timeout=30, what="the posted message in .sluice/out/")
        (document,) = [doc for doc in documents(clone / ".sluice" / "out") if doc["_id"] == answer["uuid"]]
        assert document["_source"]["rxtxMsg"]["payload"] == {"temperature": 21.5, "humidity": 40}
        assert document["_source"]["rxtxMsg"]["producer"] == "station-7"
    finally:
        run.stop()
    assert (clone / ".sluice" / "data").is_dir(), "the queue lives under .sluice/data"
