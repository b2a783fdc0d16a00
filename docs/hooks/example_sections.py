"""Reads the `Example:` section of Keras-style docstrings as code examples.

Keras and keras-hub head their examples `Example:` and leave the `>>>`
lines unindented, which the Google docstring parser reads as an admonition
followed by prose (joining the lines). Rewriting the section as an indented
`Examples:` section before parsing renders it as code, without changing the
docstrings.
"""

import re

import griffe

_SECTION = re.compile(r"^[A-Z][A-Za-z ]*:$")


def examples_as_code(text):
    lines, inside = [], False
    for line in text.splitlines():
        if line == "Example:":
            lines.append("Examples:")
            inside = True
        elif inside and _SECTION.match(line):
            lines.append(line)
            inside = False
        else:
            lines.append("    " + line if inside and line else line)
    return "\n".join(lines)


class ExampleSections(griffe.Extension):
    def on_instance(self, *, obj, **kwargs):
        if obj.docstring is not None and "\nExample:" in "\n" + obj.docstring.value:
            obj.docstring.value = examples_as_code(obj.docstring.value)
