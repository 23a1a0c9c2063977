"""Every pointer in the docs, the scripts' help and the package's docstrings leads somewhere that
exists: Markdown links and their anchors, "docs/<file>.md, '<Heading>'" references, repository
paths, and dotted ``ddpm_ood.<module>.<name>`` references (at their current, not deprecated, path)."""
from __future__ import annotations

import importlib
import re
import warnings
from pathlib import Path

import pytest

from conftest import ROOT

DOCS = [ROOT / "README.md", ROOT / "README_additional.md", *sorted((ROOT / "docs").glob("*.md"))]
SCRIPTS = sorted(ROOT.glob("*.py"))
SOURCES = sorted((ROOT / "src" / "ddpm_ood").rglob("*.py"))
# Where the 0.4 module paths are named on purpose: the map of moved modules and the deprecation notes.
OLD_PATHS_ON_PURPOSE = {ROOT / "src" / "ddpm_ood" / "_moved.py", ROOT / "src" / "ddpm_ood" / "__init__.py",
                        ROOT / "src" / "__init__.py"}

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
NAMED_SECTION = re.compile(r"\b((?:docs/)?[\w.]+\.md|README(?:_additional)?)(?:'s)?,? ['\"]([^'\"]{3,80})['\"]")
REPO_PATH = re.compile(r"(?<![\w./-])((?:docs|tests|benchmarks|scripts|src/ddpm_ood)/[\w./-]*\w\.(?:md|py|sh))\b")
DOTTED = re.compile(r"(?<![\w.])ddpm_ood(?:\.[A-Za-z_]\w*)+")


def headings(path: Path) -> list[str]:
    """The headings' texts, without Markdown code marks (fenced code blocks skipped)."""
    found, fenced = [], False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            found.append(line.lstrip("#").strip().replace("`", ""))
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def resolve_file(name: str, near: Path) -> Path | None:
    name = {"README": "README.md", "README_additional": "README_additional.md"}.get(name, name)
    for base in (near.parent, ROOT, ROOT / "docs"):
        if (base / name).is_file():
            return base / name
    return None


def texts():
    for path in DOCS + SCRIPTS + SOURCES:
        yield path, path.read_text()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_markdown_link_and_anchor_exists(doc):
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # a web address
        file_part, _, anchor = target.partition("#")
        path = (doc.parent / file_part).resolve() if file_part else doc
        assert path.exists(), f"{doc.name} links to {target}, which does not exist"
        if anchor and path.suffix == ".md":
            anchors = [slug(h) for h in headings(path)]
            assert anchor in anchors, f"{doc.name} links to {target}: no such heading in {path.name}"


def test_every_named_section_exists():
    problems = []
    for path, text in texts():
        for name, section in NAMED_SECTION.findall(text):
            target = resolve_file(name, path)
            section = " ".join(section.replace("`", "").split())  # wrapped over lines in a docstring
            if target is None or not any(h == section or h.startswith(section + ":") for h in headings(target)):
                problems.append(f"{path.relative_to(ROOT)} points at {name}, {section!r}")
    assert not problems, "no such file or heading: " + "; ".join(problems)


def test_every_repository_path_exists():
    missing = [f"{path.relative_to(ROOT)}: {mentioned}" for path, text in texts()
               for mentioned in REPO_PATH.findall(text) if not (ROOT / mentioned).exists()]
    assert not missing, "mentioned, but no such file: " + "; ".join(missing)


def dotted_target(reference: str):
    """Import the longest module prefix of ``reference`` and follow the rest as attributes."""
    parts = reference.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            obj = getattr(obj, attribute)
        return obj
    raise ModuleNotFoundError(reference)


def test_every_dotted_reference_resolves_at_its_current_path():
    problems = []
    for path, text in texts():
        if path in OLD_PATHS_ON_PURPOSE:
            continue
        for reference in set(DOTTED.findall(text)):
            with warnings.catch_warnings():
                warnings.simplefilter("error", DeprecationWarning)
                try:
                    dotted_target(reference.rstrip("."))
                except (ImportError, AttributeError, DeprecationWarning) as err:
                    problems.append(f"{path.relative_to(ROOT)} names {reference} ({type(err).__name__}: {err})")
    assert not problems, "\n".join(problems)


def test_the_checks_catch_what_they_name(tmp_path):
    """The patterns find what they must (a test of the test: a stale pointer would not slip past)."""
    assert NAMED_SECTION.findall("see docs/detectors.md, 'Which detector'") == [("docs/detectors.md",
                                                                                 "Which detector")]
    assert NAMED_SECTION.findall("(README, 'Anomaly maps')") == [("README", "Anomaly maps")]
    assert REPO_PATH.findall("as tests/test_docs.py checks") == ["tests/test_docs.py"]
    assert DOTTED.findall("(:func:`ddpm_ood.models.loading.load_model`)") == ["ddpm_ood.models.loading.load_model"]
    assert "Anomaly maps" not in headings(ROOT / "README.md")
    with pytest.raises(AttributeError):
        dotted_target("ddpm_ood.models.loading.no_such_function")
    with warnings.catch_warnings(), pytest.raises(DeprecationWarning):
        warnings.simplefilter("error", DeprecationWarning)
        import sys

        sys.modules.pop("ddpm_ood.inference", None)
        dotted_target("ddpm_ood.inference.load_model")
    assert slug("4. Anomaly maps: `reconstruct.py --save_maps N`".replace("`", "")) == \
        "4-anomaly-maps-reconstructpy---save_maps-n"


def test_makefile_and_readme_agree_on_the_demo_time():
    makefile = (ROOT / "Makefile").read_text()
    readme = (ROOT / "README.md").read_text()
    make_minutes = re.search(r"make demo .*?(\d+) to (\d+) minutes", makefile).groups()
    readme_minutes = re.search(r"make demo .*?(\d+) to (\d+) minutes", readme).groups()
    assert make_minutes == readme_minutes
