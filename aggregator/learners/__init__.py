"""A learner's data: access export, erasure and its proof across every sink (docs/privacy.md)."""
