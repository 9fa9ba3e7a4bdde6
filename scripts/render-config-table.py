"""Rewrite README.md's configuration table from relay/settings.py's table of variables.

``make docs`` runs it after a variable is added or re-documented in ``VARIABLES``;
tests/test_readme.py fails while the README and the table differ.
"""

from __future__ import annotations

from pathlib import Path

from relay.settings import config_table_markdown

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- config-table:start -->\n", "<!-- config-table:end -->"


def main() -> None:
    text = README.read_text()
    head, rest = text.split(START)
    _old, tail = rest.split(END)
    rendered = f"{head}{START}{config_table_markdown()}{END}{tail}"
    if rendered != text:
        README.write_text(rendered)
        print(f"{README.name}: configuration table rewritten from relay/settings.py")


if __name__ == "__main__":
    main()
