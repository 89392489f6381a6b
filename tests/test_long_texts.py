"""Long-document parsing and cleaning on small inline samples in the real files' formats; nothing is downloaded."""

from __future__ import annotations

import gzip
import subprocess

import pytest

from latexport.runtime.errors import LatexportError, SettingsError
from latexport.training import long_texts
from latexport.training.long_texts import (
    KINDS,
    LongDocument,
    changelog_version,
    clean_rest,
    debian_version,
    documents,
    news_digests,
    novel_chapters,
    play_acts,
    rest_title,
    title_from_slug,
)


@pytest.fixture
def fresh_documents():
    long_texts._documents.cache_clear()
    yield
    long_texts._documents.cache_clear()


def test_unknown_kind_is_a_settings_error():
    with pytest.raises(SettingsError, match="unknown kind of long text 'poetry'.*fiction, technical, news, dialogue"):
        documents("poetry")


def test_every_kind_has_a_builder():
    assert KINDS == ("fiction", "technical", "news", "dialogue")
    assert set(long_texts._BUILDERS) == set(KINDS)


def test_documents_drops_short_ones_and_builds_once(monkeypatch, fresh_documents):
    builds = []

    def build():
        builds.append(1)
        return [LongDocument("news", "long", "word " * 1500, "PyPI x 1"), LongDocument("news", "short", "word " * 1499, "PyPI x 1")]

    monkeypatch.setitem(long_texts._BUILDERS, "news", build)
    first = documents("news")
    assert [doc.title for doc in first] == ["long"]
    first.clear()  # the caller's list is its own
    assert [doc.title for doc in documents("news")] == ["long"]
    assert builds == [1]


NOVEL = """EMMA
By Jane Austen
VOLUME I
CHAPTER I
Emma Woodhouse, handsome, clever, and rich,
with a comfortable home.

She was the youngest of the two daughters.
CHAPTER II
Mr. Weston was a native of Highbury.
VOLUME II
CHAPTER I
Miss Bates stood in the very worst predicament.
[End volume one of this edition. Printed by
J. Moyes.]

Harriet was to sleep at the Abbey-Mill.
THE END
A note from the publisher.
"""


def test_novel_chapters_keep_headings_and_drop_volumes_and_notes():
    chapters = novel_chapters(NOVEL)
    assert chapters == [
        "CHAPTER I\nEmma Woodhouse, handsome, clever, and rich,\nwith a comfortable home.\n\nShe was the youngest of the two daughters.",
        "CHAPTER II\nMr. Weston was a native of Highbury.",
        "CHAPTER I\nMiss Bates stood in the very worst predicament.\nHarriet was to sleep at the Abbey-Mill.",
    ]


REST = """.. _sortinghowto:

**************
Sorting HOW TO
**************

:Author: Andrew Dalke

.. index:: pair: built-in function; sorted
   single: sorting

Python lists have a built-in :meth:`list.sort` method, see :func:`~functools.cmp_to_key`,
:ref:`the tutorial <tut-lists>` and :pep:`8` [#]_.  Read `the FAQ <https://docs.python.org/faq>`_.

.. toctree::
   :maxdepth: 2

   sorting-basics.rst

.. note::

   Sorting is **stable**.

.. versionadded:: 3.2

.. function:: sorted(iterable, /, *, key=None)
   :noindex:

   Return a new sorted list, as in ``sorted(x)``.

Example::

   >>> sorted([3, 1])
   [1, 3]

.. code-block:: python

   data.sort()

.. This comment is not shown
   nor is this line.

Sorting Basics
==============

Done ::

   x = 1
"""


def test_clean_rest_keeps_what_a_reader_sees():
    assert clean_rest(REST) == """Sorting HOW TO

:Author: Andrew Dalke

Python lists have a built-in list.sort method, see cmp_to_key,
the tutorial and PEP 8.  Read the FAQ.

Note:

   Sorting is stable.

New in version 3.2.

sorted(iterable, /, *, key=None)

   Return a new sorted list, as in sorted(x).

Example:

   >>> sorted([3, 1])
   [1, 3]

   data.sort()

Sorting Basics

Done

   x = 1"""


def test_clean_rest_version_note_with_text_on_its_line():
    assert clean_rest(".. versionchanged:: 3.3 Added the *key* argument.") == "Changed in version 3.3: Added the *key* argument."


def test_rest_title_is_the_first_underlined_line():
    assert rest_title(REST) == "Sorting HOW TO"
    assert rest_title(":mod:`json` --- JSON encoder\n============================\n") == "json --- JSON encoder"
    assert rest_title("no title here\n") == ""


def test_news_digests_group_a_section_and_skip_repeats():
    article = "Headline {}\n\n" + "word " * 9 + "end."  # 12 words
    articles = [("business", article.format(1)), ("business", article.format(2)), ("business", article.format(1)),
                ("business", article.format(3)), ("sport", article.format(4))]
    digests = news_digests(articles, digest_words=20)
    assert [section for section, _ in digests] == ["business", "business", "sport"]
    assert digests[0][1] == article.format(1) + "\n\n" + article.format(2)
    assert digests[1][1] == article.format(3)
    assert digests[2][1] == article.format(4)


PLAY = """# Hamlet

## PROLOGUE

_Enter Chorus_

## ACT I

### SCENE I. Elsinore. A platform before the castle.

_FRANCISCO at his post. Enter to him
BERNARDO_

**BERNARDO**  
Who's there?

**HAMLET**  
\\[Aside] A little more than kin,  
and less than kind.

_Exit_

HAMLET

#### ACT II

### SCENE I. A room in POLONIUS' house.

**POLONIUS**  
Give him this money.

# EPILOGUE
"""


def test_play_acts_keep_speakers_and_drop_markup():
    title, acts = play_acts(PLAY, "fallback")
    assert title == "Hamlet"
    assert [name for name, _ in acts] == ["Act I", "Act II"]
    assert acts[0][1] == """PROLOGUE

Enter Chorus

ACT I

SCENE I. Elsinore. A platform before the castle.

FRANCISCO at his post. Enter to him
BERNARDO

BERNARDO
Who's there?

HAMLET
[Aside] A little more than kin,
and less than kind.

Exit"""
    assert acts[1][1] == "ACT II\n\nSCENE I. A room in POLONIUS' house.\n\nPOLONIUS\nGive him this money.\n\nEPILOGUE"


def test_play_without_title_or_acts():
    title, acts = play_acts("**DUKE**  \nEscalus.\n", title_from_slug("measure-for-measure"))
    assert title == "Measure for Measure"
    assert acts == [("whole play", "DUKE\nEscalus.")]


def test_title_from_slug():
    assert title_from_slug("a-winter-s-tale") == "A Winter's Tale"
    assert title_from_slug("the-taming-of-the-shrew") == "The Taming of the Shrew"


def test_versions_come_from_the_debian_changelog(tmp_path):
    entry = "python3.11 (3.11.2-6+deb12u9) bookworm-security; urgency=medium\n\n  * Fix.\n"
    assert changelog_version(entry) == "3.11.2-6+deb12u9"
    folder = tmp_path / "usr/share/doc/python3.11-doc"
    folder.mkdir(parents=True)
    (folder / "changelog.Debian.gz").write_bytes(gzip.compress(entry.encode()))
    assert debian_version(tmp_path, "python3.11-doc") == "3.11.2-6+deb12u9"
    with pytest.raises(LatexportError, match="cannot tell which version of r-cran-x"):
        debian_version(tmp_path, "r-cran-x")
    with pytest.raises(LatexportError, match="not a Debian changelog"):
        changelog_version("nothing here")


def test_failed_debian_download_is_a_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("LATEXPORT_CACHE", str(tmp_path))

    def refuse(command, **kwargs):
        return subprocess.CompletedProcess(command, 100, "", "E: Unable to locate package python3.11-doc")

    monkeypatch.setattr(long_texts.subprocess, "run", refuse)
    with pytest.raises(LatexportError, match="could not download Debian's python3.11-doc: E: Unable to locate"):
        long_texts._fetch_debian("python3.11-doc")
    assert list((tmp_path / "debian").iterdir()) == []
