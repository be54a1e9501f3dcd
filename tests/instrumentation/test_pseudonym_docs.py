"""What the docs say a pseudonym is and how event times are kept is what the code does (pure, no servers).

A consumer outside this package (another service, an export reader, a data-subject request) must
be able to compute ``user.hash`` from the docs alone: ``<key id>:`` and the first 32 hex characters
of HMAC-SHA256(key, the user id as UTF-8 text). Event times are rounded to the microsecond, not
truncated (``mapping.micros_of``; the rounding itself is tested in tests/aggregator/consumer/test_mapping.py).
"""

from __future__ import annotations

import hmac

from studyin_analytics.aggregator.consumer.mapping import micros_of
from studyin_analytics.instrumentation.privacy import Pseudonymizer, is_pseudonym
from tests.support import ROOT


def test_the_documented_formula_computes_the_pseudonym() -> None:
    key = b"a secret key of the deployment"
    pseudonymizer = Pseudonymizer({"k7": key}, "k7")
    for user_id in ("42", 42, "learner-\u00e9\u4e2d", ""):
        documented = f"k7:{hmac.new(key, str(user_id).encode(), 'sha256').hexdigest()[:32]}"
        assert pseudonymizer.pseudonymize(user_id) == documented
        assert is_pseudonym(documented) and len(documented.partition(":")[2]) == 32


def test_docs_give_the_truncated_form_everywhere() -> None:
    for doc in ("README.md", "docs/instrumentation.md"):
        text = (ROOT / doc).read_text(encoding="utf-8")
        assert "<key id>:<32 hex>" in text, doc
        assert "[:32]" in text, f"{doc} shows how to compute it"
        assert "<HMAC-SHA256>`" not in text, f"{doc} still gives the untruncated form"


def test_docs_say_times_are_rounded_as_the_code_does() -> None:
    text = " ".join((ROOT / "docs" / "aggregator.md").read_text(encoding="utf-8").split())
    assert "truncated to the microsecond" not in text
    assert "rounded** (not truncated) to the microsecond" in text
    assert micros_of(1_700_000_000_000_000_900) == 1_700_000_000_000_001  # rounded, as documented
