"""Learning funnels and cohort retention: exact answers from an in-memory event-sequence store.

* :mod:`.definitions`: what may be asked (pydantic models, limits);
* :mod:`.store`: the per-learner sorted event columns (numpy), merged batch by batch;
* :mod:`.loader`: the store's refresh from PostgreSQL on a commit-ordered watermark;
* :mod:`.funnels`, :mod:`.retention`: the engines; :mod:`.suppression`: small groups;
* :mod:`.reports`: grouped, suppressed answers (the API's response models).

Semantics: docs/analytics.md.
"""
