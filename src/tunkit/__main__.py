"""``python -m tunkit`` is the same as the ``tunkit`` command."""

from tunkit.cli import main

raise SystemExit(main())
