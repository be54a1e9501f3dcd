"""What the docs say a pseudonym is and how event times are kept is what the code does (pure, no servers).

A consumer outside this package (another service, an export reader, a data-subject request) must
be able to compute ``user.hash`` from the docs alone: ``<key id>:`` and the first 32 hex characters
of HMAC-SHA256(key, the user id as UTF-8 text). Event times are rounded to the microsecond, not
truncated (``mapping.micros_of``; the rounding itself is tested in tests/aggregator/consumer/test_mapping.py).
"""

from __future__ import annotations

import hmac
import re

import pytest

from studyin_analytics.aggregator.consumer.mapping import micros_of
from studyin_analytics.instrumentation.privacy import Pseudonymizer, is_pseudonym
from tests.support import ROOT

pytestmark = pytest.mark.unit


def test_the_documented_formula_computes_the_pseudonym() -> None:
    key = b"a secret key of the deployment"
    pseudonymizer = Pseudonymizer({"k7": key}, "k7")
    for user_id in ("42", 42, "learner-\u00e9\u4e2d", ""):
        documented = f"k7:{hmac.new(key, str(user_id).encode(), 'sha256').hexdigest()[:32]}"
        assert pseudonymizer.pseudonymize(user_id) == documented
        assert is_pseudonym(documented) and len(documented.partition(":")[2]) == 32


DOCS = ("README.md", *(f"docs/{p.name}" for p in sorted((ROOT / "docs").glob("*.md"))))
RECIPE = re.compile(r"hmac\.new\([^`]*?\)\.hexdigest\(\)\[:32\]")


def _text(doc: str) -> str:
    return " ".join((ROOT / doc).read_text(encoding="utf-8").split())


def test_docs_give_the_truncated_form_everywhere() -> None:
    for doc in DOCS:
        text = _text(doc)
        for form in re.findall(r"<(?:lrs )?key id>:<([^>]*)>", text):
            assert "32 hex" in form, f"{doc}: <key id>:<{form}> does not say it is 32 hex characters"
        assert "<HMAC-SHA256>`" not in text, f"{doc} still gives the untruncated form"
    for doc in ("README.md", "docs/instrumentation.md", "docs/privacy.md"):
        assert RECIPE.search(_text(doc)), f"{doc} shows how to compute it"


def test_each_documented_recipe_computes_the_pseudonym() -> None:
    """The recipe as the docs print it (evaluated, not restated) gives what the code gives."""
    key = b"a secret key of the deployment"
    pseudonymizer = Pseudonymizer({"k1": key}, "k1")
    recipes = {
        (doc, m)
        for doc in ("README.md", "docs/instrumentation.md", "docs/privacy.md")
        for m in RECIPE.findall(_text(doc))
    }
    assert recipes
    for doc, recipe in sorted(recipes):
        for user_id in ("42", 42, "learner-\u00e9\u4e2d"):
            computed = eval(recipe, {"hmac": hmac, "key": key, "user_id": user_id})  # our own docs
            assert pseudonymizer.pseudonymize(user_id) == f"k1:{computed}", doc


def test_docs_say_times_are_rounded_as_the_code_does() -> None:
    for doc in DOCS:
        assert "truncated to the microsecond" not in _text(doc), doc
    assert "rounded** (not truncated) to the microsecond" in _text("docs/aggregator.md")
    assert micros_of(1_700_000_000_000_000_900) == 1_700_000_000_000_001  # rounded, as documented
