"""``--help`` of every ``concerto`` command is plain text (no reST from the docstrings)."""

import re

from concerto_ros.cli import SUBCOMMANDS, build_parser, walk_parsers
from concerto_ros.cli.helptext import plain

#: reST that a terminal would print as it is: literals, roles, interpreted text
MARKUP = re.compile(r"``|:(class|mod|func|meth|attr|data|ref|doc):`|`[^`\n]+`")


def test_plain_removes_roles_literals_and_interpreted_text():
    doc = ("Frames go through :class:`~concerto_ros.sensors.stream.FrameStream` (see :mod:`concerto_ros.ros.delivery`\n"
           "and :meth:`the worker <concerto_ros.runtime.StreamingRuntime.offer>`); keys ``rate_hz frames_in``;\n"
           "from `concerto export`; a `link <https://example.org>`_; run::\n\n    python x.py  # a ::b\n")
    assert plain(doc) == ("Frames go through FrameStream (see concerto_ros.ros.delivery\n"
                          "and the worker); keys rate_hz frames_in;\n"
                          "from 'concerto export'; a link; run:\n\n    python x.py  # a ::b\n")
    assert plain(None) == "" and plain("no markup: 5 m, 30 Hz") == "no markup: 5 m, 30 Hz"


def test_every_command_help_is_plain_text():
    parsers = list(walk_parsers(build_parser()))
    progs = {p.prog for p in parsers}
    # every subcommand and the nested ones (train probe, eval queries, convert rgbd, ...)
    assert {f"concerto {name}" for name in SUBCOMMANDS} <= progs
    assert {"concerto train probe", "concerto eval queries", "concerto convert rgbd"} <= progs
    for p in parsers:
        text = p.format_help()
        assert text.startswith("usage: " + p.prog)
        marked = [line for line in text.splitlines() if MARKUP.search(line)]
        assert not marked, f"{p.prog} --help shows reST markup: {marked[:3]}"
