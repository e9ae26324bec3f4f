"""store.messages.transcript_json: the fast path writes exactly what json.dumps writes, for every entry."""

from __future__ import annotations

import json

import pytest

from store.messages import transcript_json

pytestmark = pytest.mark.unit

T = 1796228262.807
CASES = [
    [],
    [{"at": T, "dir": "C", "line": 'quote " backslash \\ é NUL \x00 LS \u2028 <x>'}],
    [{"at": T, "dir": "S", "line": "250 ok"}, {"at": T + 0.001, "dir": "C", "line": "QUIT"},
     {"at": T, "dir": "S", "line": "221 bye"}],
    [{"at": T, "dir": "S", "line": "250 ok", "extra": 1}],           # other shapes: json.dumps itself
    [{"dir": "S", "line": "x", "at": T}],                            # other key order
    [{"at": 1, "dir": "S", "line": "int time"}],
    [{"at": float("nan"), "dir": "S", "line": "x"}, {"at": 1e20, "dir": "S", "line": "lone \ud800"}],
]


@pytest.mark.parametrize("lines", CASES)
def test_same_text_as_json_dumps(lines):
    assert transcript_json(lines) == json.dumps(lines)
    assert transcript_json(tuple(lines)) == json.dumps(lines)
