"""Index names from Beats-style patterns with date math on the message time.

``wx-rtbeat-%{+yyyy.MM}`` names the index after the message's month, in UTC as Beats does.
A pattern is compiled once into a ``strftime`` format. Names that change at most daily (the usual
case) are also remembered per day, because ``strftime`` costs more than the rest of a document.
"""

from __future__ import annotations

import re
from datetime import datetime

# Joda-style tokens (as in Beats' date formatter) that have an exact strftime equivalent.
_DATE_TOKENS = {
    "yyyy": "%Y",
    "yy": "%y",
    "xxxx": "%G",  # ISO week-based year, pairs with ww
    "ww": "%V",
    "MM": "%m",
    "dd": "%d",
    "DDD": "%j",
    "HH": "%H",
    "mm": "%M",
    "ss": "%S",
}
_TOKEN = re.compile("|".join(sorted(_DATE_TOKENS, key=len, reverse=True)) + r"|[A-Za-z]+")
_PLACEHOLDER = re.compile(r"%\{([^}]*)\}")
_FINER_THAN_A_DAY = ("%H", "%M", "%S")
_REMEMBERED_DAYS = 4096
# Characters Elasticsearch refuses in an index name.
_FORBIDDEN = set('\\/*?"<>| ,#:')
MAX_INDEX_NAME_BYTES = 255


class IndexPattern:
    """A compiled index name pattern; construction raises ``ValueError`` naming the problem."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        parts: list[str] = []
        literals: list[str] = []
        position = 0
        for match in _PLACEHOLDER.finditer(pattern):
            literals.append(pattern[position : match.start()])
            parts.append(pattern[position : match.start()].replace("%", "%%"))
            parts.append(_date_format(match.group(1), pattern))
            position = match.end()
        literals.append(pattern[position:])
        parts.append(pattern[position:].replace("%", "%%"))
        _check_literals(pattern, "".join(literals))
        self._format = "".join(parts)
        self.has_date = position > 0
        self._daily = not any(token in self._format for token in _FINER_THAN_A_DAY)
        self._by_day: dict[int, str] = {}

    def render(self, when: datetime) -> str:
        """The index name for a message at ``when``, which must already be in UTC."""
        if not self._daily:
            return when.strftime(self._format)
        day = when.toordinal()
        name = self._by_day.get(day)
        if name is None:
            if len(self._by_day) >= _REMEMBERED_DAYS:
                self._by_day.clear()
            name = self._by_day[day] = when.strftime(self._format)
        return name

    def wildcard(self) -> str:
        """The pattern with each date part replaced by ``*``, for index template patterns."""
        return _PLACEHOLDER.sub("*", self.pattern)

    def __repr__(self) -> str:
        return f"IndexPattern({self.pattern!r})"


def _date_format(spec: str, pattern: str) -> str:
    if not spec.startswith("+"):
        raise ValueError(
            f"index pattern {pattern!r}: %{{{spec}}} is not supported; only date math like %{{+yyyy.MM.dd}} is"
        )
    out: list[str] = []
    body = spec[1:]
    position = 0
    for match in _TOKEN.finditer(body):
        out.append(body[position : match.start()])
        token = match.group(0)
        if token not in _DATE_TOKENS:
            known = ", ".join(_DATE_TOKENS)
            raise ValueError(f"index pattern {pattern!r}: unknown date token {token!r} (known: {known})")
        out.append(_DATE_TOKENS[token])
        position = match.end()
    out.append(body[position:])
    if not body:
        raise ValueError(f"index pattern {pattern!r}: %{{+}} needs a date format such as yyyy.MM.dd")
    literal = "".join(out[0::2])
    if any(char in _FORBIDDEN or char == "%" for char in literal):
        raise ValueError(f"index pattern {pattern!r}: the date format {spec!r} has a character not allowed in an index")
    return "".join(out)


def _check_literals(pattern: str, literal: str) -> None:
    if not pattern:
        raise ValueError("the index pattern is empty")
    bad = sorted({char for char in literal if char in _FORBIDDEN})
    if bad:
        raise ValueError(f"index pattern {pattern!r}: index names cannot contain {' '.join(bad)!s}")
    if literal != literal.lower():
        raise ValueError(f"index pattern {pattern!r}: index names must be lowercase")
    if pattern[0] in "-_+":
        raise ValueError(f"index pattern {pattern!r}: index names cannot start with '-', '_' or '+'")
    if len(pattern.encode()) > MAX_INDEX_NAME_BYTES:
        raise ValueError(f"index pattern {pattern!r}: longer than {MAX_INDEX_NAME_BYTES} bytes")
