"""Issue 8's hostile input sweep: a live `sluice receiver` process (forwarding to a `sluice publisher` that writes
NDJSON files) gets a few hundred generated bad requests while good traffic flows alongside.

Every bad request must be refused with a 4xx; for protocol abuse that the HTTP parser itself rejects, the server
may instead close the connection (an answer lost to a reset counts as closed). Requests the client itself abandons
(a truncated body, a stalled body) get no answer, which is fine as long as nothing of them is stored. The
receiver must stay alive and ready, store none of the bad requests, and lose none of the good traffic: every
acknowledged uuid is delivered exactly once.

Requests are written on raw sockets, so malformed HTTP reaches the server as sent (aiohttp's client would refuse
to send most of it).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.faults.support import polled
from tests.receiver.support import (
    LoadResult,
    delivered,
    http_get_json,
    post_load,
    publisher_process,
    receiver_process,
    services,
)

MAX_BODY = 64 * 1024  # --max-body-bytes: small, so oversize bodies are cheap to send
MAX_DEPTH = 64  # the receiver's default maxDepth
# The media types the receiver reads as JSON or NDJSON (issue 4: rxtx clients send JSON under several names).
ACCEPTED_TYPES = {
    "",
    "application/json",
    "text/plain",
    "text/json",
    "application/x-www-form-urlencoded",
    "application/octet-stream",
    "application/x-ndjson",
    "application/ndjson",
    "application/jsonlines",
}
GOOD = b'{"ok": 1}'
# Outcomes: an HTTP status class, or what became of a request that got no answer.
REFUSED = frozenset({"4xx"})
PROTOCOL_ABUSE = frozenset({"4xx", "closed"})  # the parser may answer 400 or just hang up


@dataclass(frozen=True)
class Hostile:
    kind: str  # the request class, for the report
    pieces: tuple[bytes, ...]  # the request as written, piece by piece
    allowed: frozenset[str] = REFUSED
    pause: float = 0.0  # between pieces: drip-feeding
    abandon: bool = False  # the client hangs up after the last piece, without waiting for an answer
    wait: float = 15.0  # how long the client waits for an answer before it gives up
    status: int | None = None  # the exact status the contract names for this class (issue 4), when answered


def request(
    path: str | bytes,
    body: bytes = GOOD,
    content_type: str | None = "application/json",
    headers: Sequence[bytes] = (),
    method: bytes = b"POST",
    length: bool = True,
) -> bytes:
    """One HTTP/1.1 request; ``Connection: close``, so the server hangs up after answering."""
    target = path.encode() if isinstance(path, str) else path
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    if content_type is not None:
        lines.append(b"Content-Type: " + content_type.encode())
    lines += headers
    if length:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def chunked(body_chunks: Sequence[bytes], end: bool = True) -> bytes:
    encoded = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in body_chunks)
    return encoded + (b"0\r\n\r\n" if end else b"")


def chunked_head(path: str = "/rx/p/k/l") -> bytes:
    return request(path, b"", headers=[b"Transfer-Encoding: chunked"], length=False)


@dataclass(frozen=True)
class Outcome:
    status: int | None
    how: str  # answered, closed (no answer, connection closed by the server), abandoned, no answer (client gave up)
    body: bytes = b""

    @property
    def verdict(self) -> str:
        if self.status is None:
            return self.how
        return f"{self.status // 100}xx"


def exchange(port: int, case: Hostile) -> Outcome:
    with socket.create_connection(("127.0.0.1", port), timeout=case.wait) as sock:
        try:
            for piece in case.pieces:
                sock.sendall(piece)
                if case.pause:
                    time.sleep(case.pause)  # drip-feeding the body is the point of these requests
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered (413, 400) and hung up before reading everything: read what it said
        if case.abandon:
            return Outcome(None, "abandoned")
        received: list[bytes] = []
        gave_up = False
        try:
            while chunk := sock.recv(65536):
                received.append(chunk)
        except ConnectionResetError:
            pass  # closed with unread data: whatever answer arrived first is still in `received`
        except TimeoutError:
            gave_up = True
    answer = b"".join(received)
    if answer.startswith(b"HTTP/"):
        head, _, body = answer.partition(b"\r\n\r\n")
        return Outcome(int(head.split(b" ", 2)[1]), "answered", body)
    return Outcome(None, "no answer" if gave_up else "closed")


@dataclass
class Tally:
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    violations: list[tuple[str, str, bytes, bytes]] = field(default_factory=list)
    literal_uuids: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # uuid -> producer, key, label

    def record(self, case: Hostile, outcome: Outcome) -> None:
        self.outcomes[case.kind, str(outcome.status or outcome.how)] += 1
        wrong_status = case.status is not None and outcome.status not in (None, case.status)
        if outcome.verdict not in case.allowed or wrong_status:
            self.violations.append((case.kind, outcome.verdict, b"".join(case.pieces)[:200], outcome.body[:200]))

    @property
    def sent(self) -> int:
        return sum(self.outcomes.values())

    def table(self) -> str:
        kinds = sorted({kind for kind, _ in self.outcomes})
        rows = []
        for kind in kinds:
            verdicts = {verdict: n for (k, verdict), n in sorted(self.outcomes.items()) if k == kind}
            rows.append(f"  {kind:<22} {sum(verdicts.values()):>4}  {verdicts}")
        return "\n".join(rows)


# -- generated bodies ---------------------------------------------------------------------------------------

scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False) | st.text(max_size=12)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=6), json_values, min_size=1, max_size=4)


@st.composite
def invalid_json(draw: st.DrawFn) -> bytes:
    text = orjson.dumps(draw(json_objects))
    broken = draw(
        st.sampled_from(
            [
                lambda: text[: draw(st.integers(1, len(text) - 1))],  # truncated: a proper prefix of an object
                lambda: text + b"}",  # trailing garbage
                lambda: text[:-1] + b",}",  # trailing comma
                lambda: text.replace(b'"', b"'"),  # single quotes
                lambda: b"{" + text,
                lambda: text[:-1] + b',"n":NaN}',
                lambda: text[:-1] + b',"n":Infinity}',
                lambda: b"/* note */" + text,
                lambda: text + b"\n" + text,  # two documents in a single-message request
            ]
        )
    )()
    return bytes(broken)


BAD_UTF8 = [b"\xff", b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\xf8\x88\x80\x80\x80", b"\x80"]


@st.composite
def invalid_utf8(draw: st.DrawFn) -> bytes:
    before = draw(st.text(max_size=8)).encode()
    bad = draw(st.sampled_from(BAD_UTF8))
    if draw(st.booleans()):
        return b'{"s":"' + before + bad + b'"}'
    return b'{"' + bad + before + b'":1}'  # in a key


non_objects = json_values.filter(lambda value: not isinstance(value, dict)).map(orjson.dumps) | st.sampled_from(
    [b"   ", b"\n", b"\xef\xbb\xbf{}"]  # whitespace only; a byte order mark
)


@st.composite
def too_deep(draw: st.DrawFn) -> bytes:
    depth = draw(st.integers(MAX_DEPTH, 5000))  # inside the top-level object: one deeper than the limit, or far
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    return b'{"x":' + opener * depth + b"1" + closer * depth + b"}"


@st.composite
def bad_ndjson(draw: st.DrawFn) -> bytes:
    good = [orjson.dumps(value) for value in draw(st.lists(json_objects, min_size=1, max_size=5))]
    bad = draw(invalid_json() | invalid_utf8() | non_objects.filter(lambda body: body.strip() != b"") | too_deep())
    good.insert(draw(st.integers(0, len(good))), bad.replace(b"\n", b" "))
    return b"\n".join(good)


def body_cases(kind: str, bodies: st.SearchStrategy[bytes], content_type: str = "application/json") -> Any:
    return bodies.map(lambda body: Hostile(kind, (request("/rx/p/k/l", body, content_type),), status=400))


@st.composite
def oversize(draw: st.DrawFn, with_length: bool) -> Hostile:
    body = b'{"pad":"' + b"x" * draw(st.integers(MAX_BODY, 3 * MAX_BODY)) + b'"}'
    if with_length:
        return Hostile("oversize", (request("/rx/p/k/l", body),), frozenset({"4xx", "closed"}), status=413)
    pieces = [body[i : i + 8192] for i in range(0, len(body), 8192)]  # no Content-Length to check up front
    return Hostile("oversize chunked", (chunked_head() + chunked(pieces),), frozenset({"4xx", "closed"}), status=413)


media_types = st.sampled_from(
    ["text/html", "application/xml", "image/png", "multipart/form-data; boundary=x", "text/csv", "application/yaml",
     "application/x-protobuf", "application/pdf", "json", "*/*", "text/*", "application/jsonx", "application/json5",
     "x/y; charset=utf-8", "application"]
) | st.from_regex(r"\A[a-z]{1,10}/[a-z.+-]{1,12}\Z").filter(
    lambda media: media not in ACCEPTED_TYPES and not media.endswith("+json")
)  # fmt: skip


@st.composite
def odd_content_types(draw: st.DrawFn, missing: bool) -> Hostile:
    if missing:  # no Content-Type is read as JSON (curl-shaped clients): the body decides
        return Hostile("missing content type", (request("/rx/p/k/l", draw(invalid_json()), None),), status=400)
    return Hostile("odd content type", (request("/rx/p/k/l", GOOD, draw(media_types)),), status=415)


# Path tricks the contract refuses: empty parts, control characters, over-long names, unknown routes.
@st.composite
def path_tricks(draw: st.DrawFn, trick: str) -> Hostile:
    part = draw(st.sampled_from(["producer", "key", "label"]))
    names = {"producer": "p", "key": "k", "label": "l"}
    if trick == "route":
        path = draw(st.sampled_from(["/rx", "/rx/p", "/rx/", "/rxs", "/", "/in", "/rx//k/l", "/RX/p/k/l", "/rxx/p/k"]))
        return Hostile("path: unknown route", (request(path),))
    if trick == "empty":
        path = draw(st.sampled_from(["/rx//k/l", "/rx/p//l", "/rx/p/k/", "/rx/p/k//", "/rxs///", "/rx/p/k/%2F"]))
        return Hostile("path: empty segment", (request(path),))
    if trick == "control":
        code = draw(st.integers(0, 0x1F) | st.just(0x7F))
        encoded = f"%{code:02X}" if draw(st.booleans()) else "%C2%" + f"{0x80 + draw(st.integers(0, 0x1F)):02X}"
        names[part] = draw(st.text("abc", max_size=3)) + encoded + draw(st.text("xyz", max_size=3))
    elif trick == "raw control":
        raw = bytes([draw(st.integers(0, 0x1F).filter(lambda c: c not in (0x0A, 0x0D)) | st.just(0x7F))])
        return Hostile("path: raw control", (request(b"/rx/p/k/a" + raw + b"b"),), PROTOCOL_ABUSE)
    elif trick == "long":
        limit = 1024 if part == "label" else 256
        names[part] = "n" * draw(st.integers(limit + 1, 3 * limit))
    else:  # an encoded slash alone decodes to "/", which the receiver takes for an empty name
        names[part] = "%2F"
    return Hostile(f"path: {trick}", (request(f"/rx/{names['producer']}/{names['key']}/{names['label']}"),))


@st.composite
def header_floods(draw: st.DrawFn, flood: str) -> Hostile:
    bad = b"{not json"  # if the parser lets the flood through, the handler still has a reason to refuse
    if flood == "many":  # more header lines than the parser keeps (128)
        headers = [b"X-Flood-%d: v" % n for n in range(draw(st.integers(129, 2000)))]
    elif flood == "huge":  # one header longer than a line may be (8190 bytes)
        headers = [b"X-Huge: " + b"v" * draw(st.integers(8191, 64 * 1024))]
    elif flood == "heavy":  # under each limit, but large in total
        headers = [b"X-Heavy-%d: " % n + b"v" * 8000 for n in range(draw(st.integers(10, 100)))]
    elif flood == "conflicting length":
        return Hostile(
            "headers: conflicting length",
            (request("/rx/p/k/l", GOOD, headers=[b"Content-Length: 3"]),),
            PROTOCOL_ABUSE,
        )
    elif flood == "smuggling":
        headers = [draw(st.sampled_from([b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip, chunked"]))]
        return Hostile("headers: CL + TE", (request("/rx/p/k/l", chunked([GOOD]), headers=headers),), PROTOCOL_ABUSE)
    else:
        headers = [draw(st.sampled_from([b"X-Bad\x00: v", b"X Bad: v", b" X-Folded: v", b"X-Nul: a\x00b", b": v"]))]
    return Hostile(f"headers: {flood}", (request("/rx/p/k/l", bad, headers=headers),), PROTOCOL_ABUSE)


@st.composite
def broken_chunking(draw: st.DrawFn, kind: str) -> Hostile:
    body = orjson.dumps(draw(json_objects))
    if kind == "truncated":  # a valid prefix of a chunked body, then the client hangs up
        cut = draw(st.integers(1, len(body)))
        piece = chunked([body[:cut]], end=False)[: draw(st.integers(1, len(body[:cut]) + 5))]
        return Hostile("chunked: truncated", (chunked_head(), piece), frozenset({"abandoned"}), abandon=True)
    if kind == "bad size":
        size = draw(st.sampled_from([b"zz", b"-1", b"0x10", b"ffffffffffffffffff", b"1;" + b"e" * 9000]))
        encoded = size + b"\r\n" + body + b"\r\n0\r\n\r\n"
        return Hostile("chunked: bad size", (chunked_head() + encoded,), PROTOCOL_ABUSE)
    if kind == "wrong size":  # the declared size runs past what is sent: the server waits for bytes that never come
        encoded = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body) + 7, body)
        return Hostile("chunked: wrong size", (chunked_head() + encoded,), PROTOCOL_ABUSE | {"no answer"}, wait=1.0)
    return Hostile("chunked: bad json", (chunked_head() + chunked([body[:-1], b"]"]),))


@st.composite
def protocol_abuse(draw: st.DrawFn, kind: str) -> Hostile:
    if kind == "method":
        method = draw(st.sampled_from([b"GET", b"PUT", b"DELETE", b"PATCH", b"HEAD"]))
        return Hostile("method not POST", (request("/rx/p/k/l", method=method),), status=405)
    if kind == "version":
        lines = [b"POST /rx/p/k/l", b"POST /rx/p/k/l HTTP/1.1 x", b"PRI * HTTP/2.0\r\n\r\nSM", b"POST / HTTP/x.y"]
        line = draw(st.sampled_from(lines)) + b"\r\n\r\n"
        return Hostile("request line", (line,), PROTOCOL_ABUSE)
    garbage = draw(st.binary(min_size=1, max_size=512).filter(lambda data: not data[:1].isalpha()))
    return Hostile("garbage bytes", (garbage + b"\r\n\r\n",), PROTOCOL_ABUSE)


# (strategy, examples): hypothesis draws distinct requests, derandomised so the sweep is the same every run.
SWEEPS: list[tuple[Any, int]] = [
    (body_cases("invalid json", invalid_json()), 40),
    (body_cases("invalid utf-8", invalid_utf8()), 25),
    (body_cases("non-object json", non_objects), 25),
    (body_cases("deep nesting", too_deep()), 15),
    (body_cases("ndjson, one bad line", bad_ndjson(), "application/x-ndjson"), 25),
    (oversize(with_length=True), 6),
    (oversize(with_length=False), 6),
    (odd_content_types(missing=False), 20),
    (odd_content_types(missing=True), 8),
    *[(path_tricks(trick), n) for trick, n in [("control", 15), ("long", 10), ("slash-only", 4), ("empty", 6),
                                                ("raw control", 10), ("route", 9)]],
    *[(header_floods(flood), n) for flood, n in [("many", 6), ("huge", 6), ("heavy", 6), ("conflicting length", 1),
                                                  ("smuggling", 2), ("malformed", 5)]],
    *[(broken_chunking(kind), n) for kind, n in [("truncated", 8), ("bad size", 5), ("wrong size", 4),
                                                  ("bad json", 8)]],
    *[(protocol_abuse(kind), n) for kind, n in [("method", 5), ("garbage", 10), ("version", 4)]],
]  # fmt: skip


def slow_bodies() -> list[Hostile]:
    """Drip-fed bodies: complete ones must get their 4xx; stalled ones the client gives up on (the receiver sets
    no deadline for a body, so it keeps waiting until the client hangs up)."""
    cases = []
    for n, body in enumerate([b'{"a": 1,,}', b"[1, 2, 3, 4, 5]", b'{"s": "\xff\xfe"}', b"{" * 70 + b"}" * 70]):
        pieces = [body[i : i + 1 + n] for i in range(0, len(body), 1 + n)]
        cases.append(Hostile("slow body", (request("/rx/p/k/l", body)[: -len(body)], *pieces), pause=0.02))
    for size in (10, 100):
        head = request("/rx/p/k/l", b"x" * size)[:-size]
        stalled = Hostile("stalled body", (head, b'{"a":'), frozenset({"4xx", "no answer"}), wait=1.0)
        cases += [stalled, Hostile("abandoned body", (head, b'{"a":'), frozenset({"abandoned"}), abandon=True)]
    return cases


# Dot segments, encoded slashes and odd escapes in a route are not tricks to the receiver: they are kept as literal
# text (no normalisation, so nothing can climb to another route). Accepted, and checked where they land.
LITERAL_PATHS = [
    ("/rx/p/k/..", ("p", "k", "/..")),
    ("/rx/p/k/l/../m", ("p", "k", "/l/../m")),
    ("/rx/../../etc/passwd", ("..", "..", "/etc/passwd")),
    ("/rx/p/%2e%2e/l", ("p", "..", "/l")),
    ("/rx/p%2Fq/k/l", ("p/q", "k", "/l")),
    ("/rx/p/k/%ff", ("p", "k", "/%ff")),
]


def sweep(port: int, tally: Tally) -> None:
    for strategy, examples in SWEEPS:
        # Hypothesis's own settings for a sweep, not a property test: no deadline (a flood takes its time), no
        # example database, the same examples every run.
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(strategy)
        def one(case: Hostile) -> None:
            tally.record(case, exchange(port, case))

        one()
    with ThreadPoolExecutor(max_workers=8) as pool:  # slow requests side by side
        cases = slow_bodies()
        for case, outcome in zip(cases, pool.map(lambda case: exchange(port, case), cases), strict=True):
            tally.record(case, outcome)
    for path, expected in LITERAL_PATHS:
        case = Hostile("path: literal text", (request(path),), frozenset({"2xx"}))
        outcome = exchange(port, case)
        tally.record(case, outcome)
        if outcome.status == 200:
            tally.literal_uuids[orjson.loads(outcome.body)["uuid"]] = expected


def answers_health(base: str) -> bool:
    return bool(http_get_json(base + "/healthz")["status"] == "ok" and http_get_json(base + "/readyz")["ready"])


async def test_hostile_requests_are_refused_and_good_traffic_is_untouched(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    out = tmp_path / "out"
    publisher = publisher_process(out, tmp_path / "publisher.log")
    receiver = receiver_process(
        tmp_path / "q", tmp_path / "receiver.log", publisher.base,
        "--max-body-bytes", str(MAX_BODY), "--batch-max-wait", "100ms",
    )  # fmt: skip
    load, tally = LoadResult(), Tally()
    with services(receiver, publisher):
        publisher.start()
        receiver.start()
        stop = asyncio.Event()
        traffic = asyncio.create_task(post_load(receiver.base, stop, load, connections=8))
        try:
            await load.until_acked(100)  # the good traffic is flowing before the first bad request
            await asyncio.to_thread(sweep, receiver.port, tally)
            acked_during_sweep = len(load.acked)
        finally:
            stop.set()
            await traffic
        assert receiver.process.alive(), receiver.process.log_tail()
        await polled(lambda: answers_health(receiver.base), 10, "/healthz and /readyz after the sweep")
        await polled(lambda: receiver.status()["backlog"] == 0, 30, "the good traffic delivered")
        log_errors = (tmp_path / "receiver.log").read_text(errors="replace").count('"level":"error"')

    documents = delivered(out)
    copies = Counter(document["_id"] for document in documents)
    expected = set(load.acked) | set(tally.literal_uuids)
    print(f"\nhostile sweep: {tally.sent} bad requests\n{tally.table()}")
    print(f"good traffic: {len(load.acked)} acknowledged ({acked_during_sweep} by the end of the sweep), "
          f"{load.refused} refused, {load.errors} errors; {len(documents)} delivered; "
          f"{log_errors} error-level lines in the receiver log")  # fmt: skip
    record_property("bad_requests", tally.sent)
    record_property("outcomes", {f"{kind}: {verdict}": n for (kind, verdict), n in sorted(tally.outcomes.items())})
    record_property("good_acknowledged", len(load.acked))
    record_property("receiver_error_log_lines", log_errors)

    assert tally.sent >= 200
    assert not tally.violations, "requests answered outside what their class allows:\n" + "\n".join(
        f"  {kind}: {verdict} for {sent!r} -> {answer!r}" for kind, verdict, sent, answer in tally.violations
    )
    assert load.refused == load.errors == 0  # the good traffic was never turned away
    assert set(copies) == expected, "a bad request was stored, or an acknowledged message is missing"
    assert all(count == 1 for count in copies.values()), "a message was delivered twice"
    for document in documents:
        if document["_id"] in tally.literal_uuids:
            message = document["_source"]["rxtxMsg"]
            assert (message["producer"], message["key"], message["label"]) == tally.literal_uuids[document["_id"]]
