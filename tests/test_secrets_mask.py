"""mask(): secret values out of output we did not write, before it is recorded."""

from __future__ import annotations

from kuadeploy.pipeline.secrets import MARKER, mask


def test_every_occurrence_is_masked():
    assert mask("pw=hunter2; again hunter2", ["hunter2"]) == f"pw={MARKER}; again {MARKER}"


def test_nothing_to_mask_leaves_the_text_alone():
    assert mask("plain output", []) == "plain output"
    assert mask("plain output", ["absent"]) == "plain output"


def test_empty_values_are_skipped():
    assert mask("abc", ["", "b"]) == f"a{MARKER}c"


def test_the_longest_value_wins_where_values_overlap():
    text = "x=abcdef y=abc"
    assert mask(text, ["abc", "abcdef"]) == f"x={MARKER} y={MARKER}"


def test_a_marker_is_never_masked_again():
    # "e" occurs in the marker itself: one pass keeps the marker whole
    assert mask("s3 e", ["s3", "e"]) == f"{MARKER} {MARKER}"


def test_values_are_literal_and_may_span_lines():
    assert mask("a.*b a+b", [".*", "a+b"]) == f"a{MARKER}b {MARKER}"
    assert mask("begin\nline1\nline2\nend", ["line1\nline2"]) == f"begin\n{MARKER}\nend"


def test_values_a_json_answer_escaped_are_masked_too():
    import json

    value = 'p"w\\d\nline2 é'  # a quote, a backslash, a newline, non-ASCII
    for answer in (json.dumps({"db": value}), json.dumps({"db": value}, ensure_ascii=False)):
        assert mask(answer, [value]) == f'{{"db": "{MARKER}"}}', answer


def test_the_server_log_masks_the_values_of_deploys_in_progress():
    import json
    import logging
    import sys

    from kuadeploy.pipeline.secrets import hold, in_use, release
    from kuadeploy.serve import JsonLogFormatter

    def line(message: str) -> dict:
        try:
            raise RuntimeError(f"engine said: {message}")
        except RuntimeError:
            record = logging.LogRecord("x", logging.ERROR, "f", 1, message, (), sys.exc_info())
        return json.loads(JsonLogFormatter().format(record))

    hold(["s3cr3t-pw", "tok"])
    hold(["tok"])  # two deploys of apps sharing a value
    try:
        out = line("crashed with DB_PASSWORD=s3cr3t-pw")
        assert out["msg"] == "crashed with DB_PASSWORD=[secret]"
        assert "s3cr3t-pw" not in out["exc"] and "[secret]" in out["exc"]
    finally:
        release(["s3cr3t-pw", "tok"])
    assert in_use() == ["tok"]  # still held by the other deploy
    release(["tok"])
    assert in_use() == []
    assert line("s3cr3t-pw")["msg"] == "s3cr3t-pw"  # nothing in use: nothing to mask
