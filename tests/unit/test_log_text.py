"""App output over XML-RPC (issue 16, point 5): one printable rendering, and answers a
supervisord sends raw still parse."""

import xmlrpc.client

import pytest

from supervisor_fastapi.contracts.rpc import ScrubbingParser, printable, read_log_window
from supervisor_fastapi.plugins.rpc import xmlrpc_safe

RAW = "\x1b[31mERROR\x1b[0m \x01soh\x07 a\r\nb\rc \x1b]0;title\x07d \x7f \x85 \ud800 \ufffe \u00e9\t."


def test_printable_drops_colours_and_shows_other_controls_as_escapes():
    assert printable(RAW) == "ERROR \\x01soh\\x07 a\nb\nc d \\x7f \\x85 \\ud800 \\ufffe \u00e9\t."


def test_printable_text_is_carried_by_xmlrpc():
    body = xmlrpc.client.dumps((printable(RAW),), methodresponse=True)
    assert xmlrpc.client.loads(body)[0][0] == printable(RAW)


def test_xmlrpc_safe_makes_every_string_printable():
    assert xmlrpc_safe({"a\x01": ["x\x1b[1my", None, {"k": "\x00"}]}) == {"a\\x01": ["xy", {"k": "\\x00"}]}


def response_with(text: str) -> bytes:
    """What supervisord sends for a string result: dumped as is (control bytes raw), UTF-8."""
    return xmlrpc.client.dumps((text,), methodresponse=True).encode("utf-8")


def parse(data: bytes, scrub: bool):
    parser, unmarshaller = xmlrpc.client.getparser()
    p = ScrubbingParser(parser) if scrub else parser
    p.feed(data)
    p.close()
    return unmarshaller.close()[0]


def test_a_raw_answer_with_control_bytes_fails_plain_expat_and_parses_scrubbed():
    data = response_with("\x1b[31mboom\x1b[0m \x01 \u00e9 <&>\n")
    from xml.parsers.expat import ExpatError

    with pytest.raises(ExpatError):  # not well-formed (invalid token)
        parse(data, scrub=False)
    assert printable(parse(data, scrub=True)) == "boom \\x01 \u00e9 <&>\n"


@pytest.mark.parametrize("since, length, expected", [
    (0, 1000, "first\n\\x01second \u00e9\nthird\n"),
    (0, 15, "third\n"),  # the first line the window cut is dropped
    (6, 1000, "\\x01second \u00e9\nthird\n"),
    (10_000, 1000, "first\n\\x01second \u00e9\nthird\n"),  # rotated: all of it is newer
])
def test_read_log_window_reads_this_runs_bytes_as_printable_text(tmp_path, since, length, expected):
    log = tmp_path / "x.log"
    log.write_bytes("first\n\x01second \u00e9\nthird\n".encode())
    assert read_log_window(str(log), since, length) == expected


def test_read_log_window_never_follows_a_link_nor_reads_a_fifo(tmp_path):
    import os

    (tmp_path / "real").write_text("secret\n")
    os.symlink(tmp_path / "real", tmp_path / "link")
    os.mkfifo(tmp_path / "fifo")
    assert read_log_window(str(tmp_path / "link"), 0, 100) == ""
    assert read_log_window(str(tmp_path / "fifo"), 0, 100) == ""
    assert read_log_window(str(tmp_path / "missing"), 0, 100) == ""
