"""The words that say nothing about a passage's subject, shared by search and the QA answers."""

from __future__ import annotations

# English function words and question words: they match nearly every passage, so BM25 only
# listens to them by accident (an Elasticsearch `english` analyser drops most of them too),
# and a sentence that shares only them with a question does not answer it.
STOPWORDS = frozenset("""
a about after all also am an and any are as at be been being between both but by can could did
do does doing for from had has have having he her his how i if in into is it its may me might
more most must my no nor not of on or our over shall she should so some such than that the
their them then there these they this those through to under upon us very was we were what
when where which while who whom whose why will with would you your
""".split())
