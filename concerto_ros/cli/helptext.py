"""Plain-text ``--help``: module docstrings without their reStructuredText markup.

The commands' and benchmarks' descriptions are their module docstrings, which also feed the
API documentation and therefore carry reST: inline literals, cross-reference roles. A
terminal shows those characters as they are, so :func:`plain` removes them before argparse
prints the text.
"""

from __future__ import annotations

import re

__all__ = ["plain"]

# :class:`~pkg.mod.Name` -> Name, :mod:`pkg.mod` -> pkg.mod, :meth:`Text <target>` -> Text
_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`(~?)([^`<]*?)\s*(?:<[^`>]*>)?`")
_LITERAL = re.compile(r"``(.+?)``", re.S)
_INTERPRETED = re.compile(r"(?<![`\w])`([^`\n]+?)`(?![`\w])")
_LINK = re.compile(r"`([^`<\n]+?)\s*<[^`>\n]+>`_+")


def _role(match: re.Match) -> str:
    tilde, target = match.group(1), match.group(2).strip()
    return target.rsplit(".", 1)[-1] if tilde else target


def plain(doc: str | None) -> str:
    """``doc`` as plain text for a terminal.

    * a role such as ``:class:`~a.b.C``` becomes ``C`` (the last component when the target
      starts with ``~``, else the whole target; an explicit title wins);
    * an inline literal ````x```` becomes ``x``;
    * an interpreted text ```x``` becomes ``'x'``, a hyperlink ```text <url>`_`` its text;
    * a trailing ``::`` that introduces a literal block becomes ``:``.

    Line breaks and indentation are kept (use with ``argparse.RawDescriptionHelpFormatter``).

    Args:
        doc: a docstring; ``None`` (``python -OO`` strips docstrings) gives ``""``.

    Returns:
        The text without reST markup.
    """
    if not doc:
        return ""
    text = _ROLE.sub(_role, doc)
    text = _LINK.sub(r"\1", text)
    text = _LITERAL.sub(r"\1", text)
    text = _INTERPRETED.sub(r"'\1'", text)
    return re.sub(r"(\S)::$", r"\1:", text, flags=re.M)
