"""``python -m studyin_analytics.aggregator.cli``: the ``studyin-analytics`` command."""

from .main import main

raise SystemExit(main())
