"""A disk that refuses writes: the request gets 507, nothing acknowledged is lost, and the receiver heals.

The refusal is real: the receiver runs under ``prlimit --fsize``, so LevelDB's log write fails with EFBIG
exactly as it would on a full volume.
"""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest

from tests.receiver.support import receiver_process, services, stored_envelopes
from tests.support.observe import metric_sum
from tests.support.procs import wait_until

pytestmark = pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs util-linux prlimit")


def stored_uuids(data: Path) -> set[str]:
    return {orjson.loads(envelope)["uuid"] for envelope in stored_envelopes(data)}


def post(base: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(f"{base}/rx/p/k/l", data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def test_write_failures_are_507_and_the_queue_stays_intact(tmp_path: Path) -> None:
    data = tmp_path / "q"
    limited = receiver_process(data, tmp_path / "limited.log", None, wrapper=("prlimit", "--fsize=300000"))
    body = orjson.dumps({"pad": "x" * 20_000})
    answers: list[tuple[int, dict]] = []
    with services(limited):
        limited.start()
        answers = [post(limited.base, body) for _ in range(40)]
        failures = [answer for status, answer in answers if status == 507]
        assert failures, "the file size limit never bit"
        assert "could not be stored" in failures[0]["message"]
        assert limited.status()["lastDatabaseError"]
        with urllib.request.urlopen(f"{limited.base}/metrics", timeout=10) as response:
            assert metric_sum(response.read().decode(), "rxtx_db_errors_total") == len(failures)
        # It heals by itself (reopening the database), with no traffic needed.
        wait_until(lambda: limited.status()["ready"], 10, "readiness after the error")
    acked = {answer["uuid"] for status, answer in answers if status == 200}
    assert {status for status, _ in answers} <= {200, 507}
    assert stored_uuids(data) == acked  # every acknowledged message, and nothing of the refused ones

    again = receiver_process(data, tmp_path / "again.log", None)
    with services(again):
        again.start()
        assert again.status()["backlog"] == len(acked)
        last_seq = max(int(answer["seq"]) for status, answer in answers if status == 200)
        status, answer = post(again.base, b"{}")
        assert status == 200
        assert int(answer["seq"]) > last_seq
