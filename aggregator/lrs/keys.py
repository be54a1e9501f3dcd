"""Redis keys of the LRS forwarder, under ``settings.stream_prefix`` (next to the bus's own, docs/bus.md):

* ``:lrs:dead-letter``: statements the LRS rejected and events that give no valid statement, each with
  the reason (on a Redis Cluster one per shard, in its stream's slot, so the dead letter and the XACK of
  its entry go in one MULTI);
* ``:lrs:state:<group>``: a hash: per stream the PostgreSQL watermark from which a catch-up would start
  (``resume_xid:<stream>``), and the catch-up in progress (``catchup``, JSON), so a killed forwarder
  resumes where it stood.
"""

from __future__ import annotations

from ...exporter.settings import BusSettings as Settings


def dead_letter_key(settings: Settings, stream: str) -> str:
    if not settings.redis_cluster:
        return f"{settings.stream_prefix}:lrs:dead-letter"
    return f"{settings.stream_prefix}:lrs:dead-letter:{stream[stream.rindex('{') :]}"


def dead_letter_keys(settings: Settings, streams: list[str]) -> list[str]:
    return list(dict.fromkeys(dead_letter_key(settings, stream) for stream in streams))


def state_key(settings: Settings, group: str) -> str:
    return f"{settings.stream_prefix}:lrs:state:{group}"


def resume_field(stream: str) -> str:
    return f"resume_xid:{stream}"


CATCHUP_FIELD = "catchup"
