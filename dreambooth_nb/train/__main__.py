"""`python -m dreambooth_nb.train`: the command line front end."""

from ..common.commands import record_early_signals

record_early_signals()

from .cli import main  # noqa: E402  (after the signal handler: a SIGTERM while importing is then a clean stop)

raise SystemExit(main())
