"""Learning records for a Learning Record Store (LRS): StudyIn learning events as xAPI statements.

:mod:`.xapi` is the mapping (pure, no I/O); :mod:`.batches` groups mapped bus entries into POST
batches; :mod:`.delivery` posts a batch and isolates the statements an LRS refuses. See docs/xapi.md.
"""
