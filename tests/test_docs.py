"""The documentation stays true to the code: every setting is documented, every link leads somewhere."""

import re
from pathlib import Path

import pytest

from core.settings import Settings
from harness.processes import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# An environment variable in a table's first column: `NAME` or `NAME` / `OTHER`.
TABLE_VARIABLE = re.compile(r"`([A-Z][A-Z0-9_]+)`")


def settings_names() -> set[str]:
    names = {name.upper() for name in Settings.model_fields}
    for field in Settings.model_fields.values():
        if field.validation_alias is not None:
            names |= {str(choice).upper() for choice in getattr(field.validation_alias, "choices", [])}
    return names


def documented_variables() -> set[str]:
    text = (ROOT / "docs" / "configuration.md").read_text()
    found: set[str] = set()
    for line in text.splitlines():
        if line.startswith("| `"):
            first_column = line.split("|")[1]
            found |= set(TABLE_VARIABLE.findall(first_column))
    return found


def test_every_setting_is_in_a_table_of_the_configuration_page() -> None:
    missing = {name.upper() for name in Settings.model_fields} - documented_variables()

    assert not missing, f"settings not documented in docs/configuration.md: {sorted(missing)}"


def test_every_variable_the_configuration_page_lists_is_a_setting() -> None:
    unknown = documented_variables() - settings_names()

    assert not unknown, f"docs/configuration.md documents variables no setting reads: {sorted(unknown)}"


def anchors(page: Path) -> set[str]:
    """GitHub's anchors: headings lower-cased, punctuation dropped, spaces as dashes."""
    found = set()
    in_code = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(page: Path) -> None:
    broken = []
    for target in LINK.findall(page.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists() or (anchor and anchor not in anchors(linked)):
            broken.append(target)

    assert not broken, f"{page.name}: broken links {broken}"


def test_the_readme_stays_a_front_door() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()

    assert len(lines) <= 200, f"README.md has {len(lines)} lines; details belong in docs/"
